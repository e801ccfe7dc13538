"""Typed async client of the hub service (``swiftmesh.hub.v1.HubService``).

    async with HubClient(settings) as hub:
        model = await hub.pull("hf://HuggingFaceTB/SmolLM2-135M-Instruct", on_progress=print)
        path = await hub.materialize(model.name)      # a local directory with the model files
        await hub.upload_dir(out_dir, "my-adapter", format=hub_pb2.MODEL_FORMAT_PEFT_ADAPTER,
                             lineage={"base_model": model.name, "job": "jobs/abc"})

Every server error comes back as the matching :mod:`swiftmesh.runtime.errors` exception
(``NotFound``, ``InvalidArgument`` with its field violations, ``ResourceExhausted`` ...).

``BlockingHubClient`` is the same client for blocking code (threads): it runs the async client
on a private event loop.

``materialize`` uses the hub's own cache directory when the hub runs on this host (its
``LocalLocation.host_id`` names this machine and the files are there with the right sizes);
otherwise it mirrors the model through ``ReadModelFile`` into a local directory, resuming
partial files and verifying each file's sha256. The blocking face (``BlockingHubClient``, ``materialize_sync``,
``upload_dir_sync``, ``get_sync``) for threads and Ray workers is in :mod:`swiftmesh.clients.hub_blocking`.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Self

from swiftmesh.clients.base import ServiceClient
from swiftmesh.hub.v1 import hub_pb2, hub_pb2_grpc
from swiftmesh.names import model_id as _model_id
from swiftmesh.names import model_resource_name
from swiftmesh.runtime.client import DEFAULT_STREAM_TIMEOUT_S, channel, raise_domain_errors
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.durable import fsync_dir, fsync_file, write_atomic
from swiftmesh.runtime.errors import DataLoss, Internal, InvalidArgument
from swiftmesh.runtime.host import MACHINE_ID_ENV, machine_id

__all__ = [
    "MACHINE_ID_ENV",
    "MIRROR_MANIFEST",
    "HubClient",
    "format_name",
    "format_value",
    "machine_id",
    "model_resource_name",
    "same_host",
]

# Upload and mirror chunk size, bytes (the server caps ReadModelFile chunks at 4 MiB).
CHUNK_BYTES = 1 << 20
# Written into a mirrored model directory: what was verified (path, size, sha256, mtime_ns).
MIRROR_MANIFEST = ".swiftmesh-mirror.json"
_PARTIAL_SUFFIX = ".partial"
# The message grpc aio gives a client-stream write that failed because the server had ended the call.
_CORE_WRITE_ERROR = "Internal error from Core"

ProgressCallback = Callable[[hub_pb2.PullProgress], Any]


def format_name(value: int) -> str:
    """A ``hub_pb2.ModelFormat`` value as the lower-case name callers use: ``"full"``,
    ``"peft_adapter"``, ``"gguf"``, ... (``"unspecified"`` for 0). Raises ValueError for an unknown value."""
    return hub_pb2.ModelFormat.Name(value).removeprefix("MODEL_FORMAT_").lower()


def format_value(name: str) -> int:
    """The ``hub_pb2.ModelFormat`` value of a lower-case format name (inverse of :func:`format_name`).
    Raises InvalidArgument naming ``format`` for an unknown name."""
    try:
        return hub_pb2.ModelFormat.Value("MODEL_FORMAT_" + name.upper())
    except ValueError:
        known = [format_name(v) for v in hub_pb2.ModelFormat.values() if v]
        raise InvalidArgument(f"unknown model format {name!r}; one of {', '.join(known)}",
                              field_violations=[("format", f"one of {', '.join(known)}")]) from None


def same_host(model: hub_pb2.Model) -> bool:
    """True when ``model.location`` is usable directly from this process: its host id names
    this machine and every file of the model exists there with its recorded size."""
    loc = model.location
    if not loc.host_id or not loc.path:
        return False
    if loc.host_id.split("|", 1)[0] != machine_id():
        return False
    root = Path(loc.path)
    try:
        for f in model.files:
            if (root / f.path).stat().st_size != f.size_bytes:
                return False
    except OSError:
        return False
    return root.is_dir()


def _lineage(lineage: Mapping[str, str] | hub_pb2.Lineage | None) -> hub_pb2.Lineage | None:
    if lineage is None:
        return None
    if isinstance(lineage, hub_pb2.Lineage):
        return lineage
    unknown = set(lineage) - {"base_model", "parent_model", "job"}
    if unknown:
        raise InvalidArgument(
            f"unknown lineage keys {sorted(unknown)}; use base_model, parent_model, job",
            field_violations=[("lineage", f"unknown keys {sorted(unknown)}")],
        )
    out = hub_pb2.Lineage()
    for key, value in lineage.items():
        if value:
            setattr(out, key, model_resource_name(value) if key != "job" else value)
    return out


def _sha256_file(path: Path, bufsize: int = 4 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


async def _call_progress(cb: ProgressCallback | None, progress: hub_pb2.PullProgress) -> None:
    if cb is None:
        return
    result = cb(progress)
    if inspect.isawaitable(result):
        await result


class HubClient(ServiceClient):
    """Async client of the hub. Use as ``async with HubClient(settings) as hub:``.

    Args:
        settings: SwiftMesh settings (deadline, auth token, TLS, ``data_dir`` for mirrors).
        target: hub address "host:port" (default ``settings.hub.target``).
        retries: the channel's retries of UNAVAILABLE (off for callers that retry and resume
            themselves, such as a hub mirroring another hub's files).

    Unary calls use ``settings.rpc_timeout_s``; pulls, uploads and mirrors have no practical
    deadline (24 h). Errors raise :mod:`swiftmesh.runtime.errors` exceptions.
    """

    def __init__(self, settings: Settings, target: str | None = None, *, retries: bool = True,
                 send_token: bool = True) -> None:
        super().__init__(settings, target or settings.hub.target)
        self._retries = retries
        self._send_token = send_token
        self._stub: hub_pb2_grpc.HubServiceStub | None = None

    async def __aenter__(self) -> Self:
        """Open the channel (shared factory, with or without its retries) and the stub."""
        self._channel = channel(self.target, self.settings, retries=self._retries, send_token=self._send_token)
        self._open()
        return self

    def _open(self) -> None:
        self._stub = hub_pb2_grpc.HubServiceStub(self._channel)

    async def close(self) -> None:
        """Close the channel and drop the stub; idempotent."""
        await super().close()
        self._stub = None

    @property
    def stub(self) -> hub_pb2_grpc.HubServiceStub:
        """The HubService stub. Raises RuntimeError outside ``async with``."""
        if self._stub is None:
            raise RuntimeError("HubClient is not open: use `async with HubClient(settings) as hub:`")
        return self._stub

    # ------------------------------------------------------------------------------------
    async def pull(
        self,
        source: str,
        model_id: str = "",
        *,
        revision: str = "",
        allow_patterns: Iterable[str] = (),
        ignore_patterns: Iterable[str] = (),
        allow_pickle: bool = False,
        force: bool = False,
        lineage: Mapping[str, str] | hub_pb2.Lineage | None = None,
        labels: Mapping[str, str] | None = None,
        pin: str = "",
        format: int = hub_pb2.MODEL_FORMAT_UNSPECIFIED,
        on_progress: ProgressCallback | None = None,
    ) -> hub_pb2.Model:
        """Pull ``source`` into the hub's cache and return the Model once complete and verified.

        ``source``: a local path or ``file://``, ``http(s)://`` (file, directory listing ending in
        "/", or a JSON manifest), ``hf://org/name[@rev]``, ``ms://org/name[@rev]``,
        ``pkg://<package>/<path>``; ``*.gguf`` is converted to a full model. ``on_progress`` (sync or
        async) receives each ``PullProgress``. A model already present returns at once (``force``
        pulls again). Raises InvalidArgument (bad source, name, pickle weights), ResourceExhausted
        (quota), NotFound (source missing), Unavailable (source unreachable after retries).
        """
        req = hub_pb2.PullModelRequest(
            source=str(source),
            model_id=_model_id(model_id) if model_id else "",
            revision=revision,
            allow_patterns=list(allow_patterns),
            ignore_patterns=list(ignore_patterns),
            allow_pickle=allow_pickle,
            force=force,
            labels=dict(labels or {}),
            pin=pin,
            format=format,
        )
        lin = _lineage(lineage)
        if lin is not None:
            req.lineage.CopyFrom(lin)
        model = None
        with raise_domain_errors():
            async for resp in self.stub.PullModel(req):
                if resp.HasField("progress"):
                    await _call_progress(on_progress, resp.progress)
                elif resp.HasField("model"):
                    model = resp.model
        if model is None:
            raise DataLoss(f"PullModel({source}) ended without a model")
        return model

    async def get(self, name: str) -> hub_pb2.Model:
        """The model ``name`` ("x" or "models/x"). Raises NotFound."""
        with raise_domain_errors():
            return await self.stub.GetModel(hub_pb2.GetModelRequest(name=model_resource_name(name)))

    async def list(
        self,
        *,
        formats: Iterable[int] = (),
        base_model: str = "",
        parent_model: str = "",
        page_size: int = 1000,
    ) -> list[hub_pb2.Model]:
        """Every model (all pages), newest first, filtered by format and lineage."""
        out: list[hub_pb2.Model] = []
        token = ""
        while True:
            req = hub_pb2.ListModelsRequest(
                page_size=page_size,
                page_token=token,
                formats=list(formats),
                base_model=model_resource_name(base_model) if base_model else "",
                parent_model=model_resource_name(parent_model) if parent_model else "",
            )
            with raise_domain_errors():
                resp = await self.stub.ListModels(req)
            out.extend(resp.models)
            token = resp.next_page_token
            if not token:
                return out

    async def delete(self, name: str, force: bool = False) -> None:
        """Delete a model (blobs other models share stay). FailedPrecondition if pinned and not ``force``."""
        with raise_domain_errors():
            await self.stub.DeleteModel(hub_pb2.DeleteModelRequest(name=model_resource_name(name), force=force))

    async def verify(self, name: str, repair: bool = False) -> hub_pb2.VerifyModelResponse:
        """Re-hash every file of a model; with ``repair`` re-fetch bad files from the source."""
        with raise_domain_errors():
            return await self.stub.VerifyModel(
                hub_pb2.VerifyModelRequest(name=model_resource_name(name), repair=repair),
                timeout=DEFAULT_STREAM_TIMEOUT_S,
            )

    async def pin(self, name: str, holder: str) -> hub_pb2.Model:
        """Pin a model for ``holder`` ("jobs/abc", "workers/host:port"); pinned models are never evicted."""
        with raise_domain_errors():
            return await self.stub.PinModel(hub_pb2.PinModelRequest(name=model_resource_name(name), holder=holder))

    async def unpin(self, name: str, holder: str) -> hub_pb2.Model:
        """Remove ``holder``'s pin (no-op if it holds none)."""
        with raise_domain_errors():
            return await self.stub.UnpinModel(hub_pb2.UnpinModelRequest(name=model_resource_name(name), holder=holder))

    # ------------------------------------------------------------------------------------
    async def read_file(
        self, name: str, path: str, offset: int = 0, limit: int = 0, chunk_size: int = 0
    ) -> AsyncIterator[hub_pb2.ReadModelFileResponse]:
        """Stream one file of a model from ``offset`` (bytes), at most ``limit`` bytes (0: to the end)."""
        req = hub_pb2.ReadModelFileRequest(
            name=model_resource_name(name), path=path, offset=offset, limit=limit, chunk_size=chunk_size
        )
        call = self.stub.ReadModelFile(req)
        try:
            with raise_domain_errors():
                async for resp in call:
                    yield resp
        finally:
            call.cancel()  # a reader that stops early ends the call (no-op once it is done)

    async def materialize(self, name: str, dest_root: Path | None = None) -> Path:
        """A local directory holding the model ``name``.

        Same host as the hub: the hub's cache directory itself (read it, never write into it).
        Otherwise the model is mirrored through ReadModelFile into ``dest_root/<model id>``
        (default ``settings.data_dir/"mirror"``): files already verified are kept, partial files
        resume from their size, each file's sha256 is checked, files not in the model are
        removed. Concurrent materializations of one model on this host share the work (file lock).
        Raises NotFound, DataLoss (a file's hash did not match after a full re-read).
        """
        model = await self.get(name)
        if same_host(model):
            return Path(model.location.path)
        root = Path(dest_root) if dest_root is not None else self.settings.data_dir / "mirror"
        return await self._mirror(model, root)

    async def _mirror(self, model: hub_pb2.Model, root: Path) -> Path:
        from filelock import AsyncFileLock

        model_id = _model_id(model.name)
        dest = root / model_id
        dest.mkdir(parents=True, exist_ok=True)
        lock = AsyncFileLock(str(root / f".{model_id.replace('/', '--')}.lock"))
        async with lock:
            manifest_path = dest / MIRROR_MANIFEST
            try:
                verified: dict[str, dict] = json.loads(manifest_path.read_text()).get("files", {})
            except (OSError, ValueError):
                verified = {}
            wanted = {f.path for f in model.files}
            for f in model.files:
                target = dest / f.path
                rec = verified.get(f.path)
                try:
                    st = target.stat()
                except OSError:
                    st = None
                if (
                    st is not None
                    and rec
                    and rec.get("sha256") == f.sha256
                    and rec.get("size") == st.st_size == f.size_bytes
                    and rec.get("mtime_ns") == st.st_mtime_ns
                ):
                    continue
                await self._mirror_file(model.name, f, target)
                st = target.stat()
                verified[f.path] = {"sha256": f.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
                _write_json_atomic(manifest_path, {"model": model.name, "files": verified})
            # drop files the model no longer has (e.g. after an overwrite upload)
            for p in sorted(dest.rglob("*"), reverse=True):
                rel = p.relative_to(dest).as_posix()
                if p.is_file() and rel != MIRROR_MANIFEST and rel not in wanted and not rel.endswith(_PARTIAL_SUFFIX):
                    p.unlink()
                elif p.is_dir() and not any(p.iterdir()):
                    p.rmdir()
            verified = {k: v for k, v in verified.items() if k in wanted}
            _write_json_atomic(manifest_path, {"model": model.name, "files": verified})
        return dest

    async def _mirror_file(self, name: str, f: hub_pb2.ModelFile, target: Path) -> None:
        """Fetch one file into ``target`` through ``<target>.partial``, resuming, then verify and rename."""
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            # present but not recorded as verified: check it once
            if target.stat().st_size == f.size_bytes and await asyncio.to_thread(_sha256_file, target) == f.sha256:
                return
            target.unlink()
        part = target.with_name(target.name + _PARTIAL_SUFFIX)
        for attempt in range(2):
            h = hashlib.sha256()
            offset = 0
            if part.exists():
                offset = part.stat().st_size
                if offset > f.size_bytes:
                    part.unlink()
                    offset = 0
                else:
                    h = await asyncio.to_thread(_hash_prefix, part)
            with await asyncio.to_thread(open, part, "ab") as out:
                if offset < f.size_bytes or f.size_bytes == 0:
                    async for resp in self.read_file(name, f.path, offset=offset):
                        if resp.offset != offset:
                            raise DataLoss(f"{f.path}: expected data at offset {offset}, got {resp.offset}")
                        if resp.sha256 and resp.sha256 != f.sha256:
                            raise DataLoss(f"{f.path}: the hub's file changed while mirroring ({resp.sha256})")
                        await asyncio.to_thread(out.write, resp.data)
                        h.update(resp.data)
                        offset += len(resp.data)
            if offset == f.size_bytes and h.hexdigest() == f.sha256:
                await asyncio.to_thread(fsync_file, part)
                os.replace(part, target)
                await asyncio.to_thread(fsync_dir, target.parent)
                return
            part.unlink(missing_ok=True)  # corrupt partial: start over once
        raise DataLoss(f"{name}/{f.path}: sha256 mismatch after mirroring (expected {f.sha256})")

    # ------------------------------------------------------------------------------------
    async def upload_dir(
        self,
        path: str | Path,
        model_id: str,
        *,
        format: int,
        lineage: Mapping[str, str] | hub_pb2.Lineage | None = None,
        labels: Mapping[str, str] | None = None,
        overwrite: bool = False,
    ) -> hub_pb2.Model:
        """Register every file under ``path`` as model ``model_id`` (UploadModel client stream).

        ``format``: a ``hub_pb2.ModelFormat`` value (e.g. ``MODEL_FORMAT_PEFT_ADAPTER``).
        ``lineage``: ``{"base_model": ..., "parent_model": ..., "job": ...}``. Hidden files and
        directories (".name") are skipped. Raises InvalidArgument (empty directory, bad name),
        AlreadyExists (unless ``overwrite``), ResourceExhausted (quota).
        """
        root = Path(path)
        if not root.is_dir():
            raise InvalidArgument(f"{root} is not a directory", field_violations=[("path", "not a directory")])
        files = [
            p
            for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        ]
        if not files:
            raise InvalidArgument(f"{root} holds no files", field_violations=[("path", "empty directory")])
        entries = []
        for p in files:
            sha = await asyncio.to_thread(_sha256_file, p)
            entries.append(hub_pb2.ModelFile(path=p.relative_to(root).as_posix(), size_bytes=p.stat().st_size, sha256=sha))
        header = hub_pb2.UploadModelHeader(
            model_id=_model_id(model_id), format=format, files=entries, labels=dict(labels or {}), overwrite=overwrite
        )
        lin = _lineage(lineage)
        if lin is not None:
            header.lineage.CopyFrom(lin)

        async def requests() -> AsyncIterator[hub_pb2.UploadModelRequest]:
            yield hub_pb2.UploadModelRequest(header=header)
            for p, entry in zip(files, entries):
                offset = 0
                with await asyncio.to_thread(open, p, "rb") as fh:
                    while True:
                        data = await asyncio.to_thread(fh.read, CHUNK_BYTES)
                        if not data:
                            break
                        yield hub_pb2.UploadModelRequest(
                            chunk=hub_pb2.UploadFileChunk(path=entry.path, offset=offset, data=data)
                        )
                        offset += len(data)

        try:
            with raise_domain_errors():
                return await self.stub.UploadModel(requests(), timeout=DEFAULT_STREAM_TIMEOUT_S)
        except Internal as e:
            if e.message != _CORE_WRITE_ERROR:
                raise
            # The hub refused the upload while chunks were still being written: grpc aio then
            # reports the failed write as INTERNAL "Internal error from Core" instead of the
            # hub's status (grpc/grpc#36066; fix proposed in grpc/grpc#43486). A refusal of the
            # header (pickle weights, an existing model, the quota, a bad name) is deterministic:
            # send the header alone to get it. A header the hub accepts ends with "no data
            # received" (the original error is raised), or, when the hub holds every file
            # already, is a complete verified upload.
            try:
                with raise_domain_errors():
                    return await self.stub.UploadModel(_single(hub_pb2.UploadModelRequest(header=header)),
                                                       timeout=DEFAULT_STREAM_TIMEOUT_S)
            except InvalidArgument as probe:
                if probe.reason != "NO_DATA_RECEIVED":
                    raise
                raise e from None


async def _single(msg: Any) -> AsyncIterator[Any]:
    yield msg


def _hash_prefix(path: Path) -> Any:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h


def _write_json_atomic(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True))
