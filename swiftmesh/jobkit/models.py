"""Where jobs read models and datasets from, and where they register their outputs.

:class:`HubModelSource` is the production source: the SwiftMesh hub through
``swiftmesh.clients.hub`` (workers on any Ray node materialize models through it, mirrored
over the hub's file stream when they do not share its disk). :class:`LocalModelSource` keeps
models as directories under one root, for unit tests, benchmarks and offline use.

Both are picklable: the job machinery ships the source to every Ray worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from swiftmesh.names import model_id, model_resource_name
from swiftmesh.runtime.errors import InvalidArgument, NotFound

# Formats, as the lower-case names of the hub's model formats (clients.hub.format_name).
FULL = "full"
PEFT_ADAPTER = "peft_adapter"
GGUF_DERIVED = "gguf_derived"
DATASET = "dataset"
FORMATS = (FULL, PEFT_ADAPTER, GGUF_DERIVED, DATASET)


@dataclass
class ModelInfo:
    """What a job needs to know about a model before it runs.

    Attributes:
        name: "models/{id}".
        format: one of ``FORMATS``.
        base_model: lineage base ("models/{id}", empty for a base model).
        parent_model: lineage parent.
        size_bytes: total file size.
        files: relative paths of its files.
    """

    name: str
    format: str
    base_model: str = ""
    parent_model: str = ""
    size_bytes: int = 0
    files: list[str] = field(default_factory=list)


@dataclass
class MaterializedModel:
    """Where :meth:`HubModelSource.materialize_info` put a model.

    Attributes:
        path: local directory holding the model's files.
        mirrored: True when the files were copied through the hub's file stream (this host does
            not share the hub's disk); False when ``path`` is the hub's own cache directory.
        host: this process's host identity (``swiftmesh.runtime.host.machine_id``).
    """

    path: Path
    mirrored: bool
    host: str = ""


def mirror_root(settings) -> Path:
    """Where this process mirrors hub models it cannot read in place: ``<data dir>/mirror``, the
    data dir being this process's own ``$SWIFTMESH_DATA_DIR`` when set (on a Ray node: the
    environment of its ``ray start``), else ``settings.data_dir`` (the service's, shipped with
    the job)."""
    env = os.environ.get("SWIFTMESH_DATA_DIR", "").strip()
    base = Path(os.path.expanduser(env)) if env else Path(settings.data_dir)
    return base / "mirror"


def model_name(name: str) -> str:
    """"models/x" for "x" or "models/x" (the shared grammar, :mod:`swiftmesh.names`); an empty
    name is InvalidArgument on ``spec.model``."""
    return model_resource_name(name, "spec.model")


def resolve_model(models: ModelSource, name: str, field: str = "spec.model") -> dict[str, str]:
    """``{"base_model", "adapter_model"}`` ("models/{id}"; adapter "" for a full model) of the
    model a job starts from: a full model is its own base; a PEFT adapter's base comes from its
    lineage (or its adapter_config.json).

    Raises NotFound when the source lacks the model or its base, InvalidArgument on ``field``
    for a dataset or an adapter that names no base.
    """
    info = models.get(model_resource_name(name, field))
    if info.format == DATASET:
        raise InvalidArgument(f"{info.name} is a dataset, not a model", field_violations=[(field, "a dataset")],
                              reason="BAD_SPEC")
    if info.format != PEFT_ADAPTER:
        return {"base_model": info.name, "adapter_model": ""}
    base = info.base_model
    if not base:
        cfg_path = Path(models.materialize(info.name)) / "adapter_config.json"
        try:
            base = json.loads(cfg_path.read_text()).get("base_model_name_or_path", "")
        except (OSError, json.JSONDecodeError):
            base = ""
        if not base:
            raise InvalidArgument(f"adapter {info.name} names no base model (lineage.base_model)",
                                  field_violations=[(field, "adapter without a base model")], reason="BAD_SPEC")
        base = model_resource_name(base, field)
    models.get(base)  # NotFound when the source lacks the base
    return {"base_model": model_resource_name(base, field), "adapter_model": info.name}


def fix_adapter_config(adapter_dir: str | Path, base_model: str) -> None:
    """Point ``base_model_name_or_path`` of a PEFT adapter at the hub id of its base (not a
    worker's temporary path); nothing when the directory holds no adapter_config.json."""
    p = Path(adapter_dir) / "adapter_config.json"
    if p.is_file():
        cfg = json.loads(p.read_text())
        cfg["base_model_name_or_path"] = model_id(base_model)
        p.write_text(json.dumps(cfg, indent=2))


@runtime_checkable
class ModelSource(Protocol):
    """The model registry a job talks to (blocking calls; run them off the event loop)."""

    def get(self, name: str) -> ModelInfo:
        """NotFound when the registry lacks the model."""

    def materialize(self, name: str) -> Path:
        """A local directory holding the model's files (downloaded or mirrored if needed)."""

    def exists(self, name: str) -> bool:
        """Whether the registry has the model."""

    def upload(
        self,
        path: str | Path,
        model_id: str,
        *,
        format: str,
        lineage: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        overwrite: bool = False,
    ) -> str:
        """Register a directory as a model; returns its name. Atomic: all or nothing."""

    def pin(self, name: str, holder: str) -> None:
        """Keep the model from eviction while ``holder`` (a job name) uses it."""

    def unpin(self, name: str, holder: str) -> None:
        """Release a :meth:`pin`."""


class HubModelSource:
    """The SwiftMesh hub service (``settings.hub.target``) as a model source."""

    def __init__(self, settings) -> None:
        self.settings = settings

    def _run(self, fn):
        from swiftmesh.clients.hub import HubClient

        async def go():
            async with HubClient(self.settings) as hub:
                return await fn(hub)

        return asyncio.run(go())

    def get(self, name: str) -> ModelInfo:
        """The hub's record of the model as a :class:`ModelInfo`; NotFound when the hub lacks it."""
        from swiftmesh.clients.hub import format_name

        m = self._run(lambda hub: hub.get(model_name(name)))
        fmt = format_name(m.format)
        return ModelInfo(
            name=m.name,
            format=fmt,
            base_model=m.lineage.base_model,
            parent_model=m.lineage.parent_model,
            size_bytes=m.size_bytes,
            files=[f.path for f in m.files],
        )

    def exists(self, name: str) -> bool:
        """Whether the hub has the model."""
        try:
            self.get(name)
            return True
        except NotFound:
            return False

    def materialize(self, name: str) -> Path:
        """A local directory with the model's files: the hub's cache itself when this process
        is on the hub's host (same disk), else a verified mirror fetched through the hub's
        ``ReadModelFile`` stream into :func:`mirror_root` (never from the internet).
        Raises NotFound, DataLoss."""
        return self.materialize_info(name).path

    def materialize_info(self, name: str) -> MaterializedModel:
        """:meth:`materialize`, also saying how the files got here (for the job's log)."""
        from swiftmesh.runtime.host import machine_id

        name = model_name(name)

        async def go(hub):
            model = await hub.get(name)
            path = Path(await hub.materialize(name, dest_root=mirror_root(self.settings)))
            in_place = bool(model.location.path) and path == Path(model.location.path)
            return MaterializedModel(path=path, mirrored=not in_place, host=machine_id())

        return self._run(go)

    def upload(self, path, model_id, *, format, lineage=None, labels=None, overwrite=False) -> str:
        """Upload a directory as ``models/{model_id}`` (``format``: "full" or "peft_adapter", lineage and labels as the hub takes them); returns its name."""
        from swiftmesh.clients.hub import format_value
        from swiftmesh.clients.hub_blocking import upload_dir_sync

        fmt = format_value(format)
        m = upload_dir_sync(
            self.settings, Path(path), model_id, format=fmt, lineage=lineage, labels=labels, overwrite=overwrite
        )
        return m.name

    def pin(self, name: str, holder: str) -> None:
        """Pin the model in the hub for ``holder``."""
        self._run(lambda hub: hub.pin(model_name(name), holder))

    def unpin(self, name: str, holder: str) -> None:
        """Release the hub pin of ``holder``."""
        self._run(lambda hub: hub.unpin(model_name(name), holder))


class LocalModelSource:
    """Models as directories ``<root>/<id>/`` with a ``.swiftmesh-model.json`` beside the files.

    ``add(path, id, format=...)`` registers an existing directory (copied). Used where no hub
    runs: unit tests, the benchmark, offline experiments.
    """

    META = ".swiftmesh-model.json"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _dir(self, name: str) -> Path:
        return self.root / model_id(name)

    def get(self, name: str) -> ModelInfo:
        """The model under the root as a :class:`ModelInfo`; NotFound when there is no such directory."""
        d = self._dir(name)
        meta = d / self.META
        if not meta.is_file():
            raise NotFound(f"model {model_name(name)} does not exist", reason="MODEL_NOT_FOUND",
                           metadata={"model": model_name(name)})
        m = json.loads(meta.read_text())
        files = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and p.name != self.META)
        return ModelInfo(
            name=model_name(name),
            format=m.get("format", FULL),
            base_model=m.get("lineage", {}).get("base_model", ""),
            parent_model=m.get("lineage", {}).get("parent_model", ""),
            size_bytes=sum((d / f).stat().st_size for f in files),
            files=files,
        )

    def exists(self, name: str) -> bool:
        """Whether the root holds the model."""
        return (self._dir(name) / self.META).is_file()

    def materialize(self, name: str) -> Path:
        """The model's directory under the root."""
        self.get(name)
        return self._dir(name)

    def add(self, path, model_id_, *, format=FULL, lineage=None, labels=None, overwrite=False) -> str:
        """Copy a model directory in as ``model_id`` (with its format and lineage); returns its name."""
        return self.upload(path, model_id_, format=format, lineage=lineage, labels=labels, overwrite=overwrite)

    def upload(self, path, model_id, *, format, lineage=None, labels=None, overwrite=False) -> str:
        """Copy a directory in as ``models/{model_id}`` (AlreadyExists unless ``overwrite``); returns its name."""
        from swiftmesh.runtime.errors import AlreadyExists

        if format not in FORMATS:
            raise InvalidArgument(f"unknown model format {format!r}; expected one of {FORMATS}")
        dest = self._dir(model_id)
        if dest.exists():
            if not overwrite:
                raise AlreadyExists(f"model models/{model_id} already exists", reason="MODEL_EXISTS")
            shutil.rmtree(dest)
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        src = Path(path)
        if src.is_dir():
            shutil.copytree(src, tmp)
        else:
            tmp.mkdir()
            shutil.copy2(src, tmp / src.name)
        (tmp / self.META).write_text(json.dumps({"format": format, "lineage": lineage or {}, "labels": labels or {}}))
        tmp.rename(dest)
        return model_name(model_id)

    def pin(self, name: str, holder: str) -> None:
        """Nothing to pin locally."""

    def unpin(self, name: str, holder: str) -> None:
        """Nothing to unpin locally."""
