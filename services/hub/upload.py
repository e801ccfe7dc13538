"""UploadModel: a header naming every file (size, sha256), then the files' bytes in order of
offset; the model is registered only once every file is complete and matches its hash. Files
the cache already holds by hash need not be sent."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from swiftmesh.names import validate_file_list, validate_model_id
from swiftmesh.runtime.errors import AlreadyExists, InvalidArgument

from .catalogue import Catalogue, validate_labels, validate_lineage
from .download import check_free_space, disk_full, is_disk_full
from .eviction import Eviction
from .sources.base import is_pickle
from .store import FileEntry, Lineage, ModelFormat, ModelRecord, Store


@dataclass
class UploadHeader:
    """The domain form of ``UploadModelHeader``: the model id, its format (UNSPECIFIED: detected
    from config.json / adapter_config.json), every file with size and sha256."""

    model_id: str
    format: ModelFormat
    files: list[FileEntry]
    lineage: Lineage = field(default_factory=Lineage)
    labels: dict[str, str] = field(default_factory=dict)
    overwrite: bool = False


def begin_upload(store: Store, catalogue: Catalogue, eviction: Eviction, header: UploadHeader,
                 allow_pickle: bool = False) -> Upload:
    """Validate an upload header and prepare its staging directory. Pickle-based weight files
    (:func:`.sources.base.is_pickle`) are refused unless ``allow_pickle`` (setting
    ``hub.upload_allow_pickle``), the same policy pulls apply. Raises InvalidArgument (fields under
    ``header``; reason PICKLE_REFUSED), AlreadyExists (unless overwrite), ResourceExhausted
    (QUOTA_EXCEEDED; DISK_FULL when the files would not fit the cache's filesystem)."""
    model_id = validate_model_id(header.model_id, "header.model_id")
    header.model_id = model_id
    validate_lineage(header.lineage, "header.lineage")
    validate_labels(header.labels, "header.labels")
    if not header.files:
        raise InvalidArgument("an upload needs at least one file", field_violations=[("header.files", "empty")])
    paths = validate_file_list([(f.path, f.size) for f in header.files], "header.files[{i}]", "size_bytes")
    seen = set(paths)
    for i, (f, path) in enumerate(zip(header.files, paths, strict=True)):
        f.path = path
        if is_pickle(f.path) and not allow_pickle:
            raise InvalidArgument(
                f"upload lists pickle-based weights {f.path} (loading it can run arbitrary code); upload "
                "safetensors instead, or set hub.upload_allow_pickle (SWIFTMESH_HUB__UPLOAD_ALLOW_PICKLE=true)",
                field_violations=[(f"header.files[{i}].path", "pickle file needs hub.upload_allow_pickle")],
                reason="PICKLE_REFUSED")
        if len(f.sha256) != 64 or any(c not in "0123456789abcdef" for c in f.sha256):
            raise InvalidArgument(f"sha256 of {f.path} must be 64 lower-case hex digits",
                                  field_violations=[(f"header.files[{i}].sha256", "64 lower-case hex digits")])
    fmt = header.format
    if fmt not in ModelFormat.__members__.values():
        raise InvalidArgument(f"unknown format {fmt}", field_violations=[("header.format", "unknown value")])
    if fmt == ModelFormat.UNSPECIFIED:
        if "adapter_config.json" in seen:
            header.format = ModelFormat.PEFT_ADAPTER
        elif "config.json" in seen:
            header.format = ModelFormat.FULL
        else:
            raise InvalidArgument("set header.format: no config.json or adapter_config.json to detect it from",
                                  field_violations=[("header.format", "required")])
    if not header.overwrite and store.get_model(model_id) is not None:
        raise AlreadyExists(f"models/{model_id} exists; upload with overwrite to replace it",
                            reason="MODEL_EXISTS", field_violations=[("header.model_id", "exists")])
    needed = sum(f.size for f in header.files if not store.has_blob(f.sha256, f.size))
    eviction.make_room(needed, model_id, {f.sha256 for f in header.files})
    check_free_space(store.staging_dir, needed)
    return Upload(store, catalogue, header)


class Upload:
    """An upload in progress: chunks in order of offset per file, then :meth:`commit`."""

    def __init__(self, store: Store, catalogue: Catalogue, header: UploadHeader) -> None:
        self.store = store
        self.catalogue = catalogue
        self.header = header
        self.staging = store.staging_dir / f"upload-{uuid.uuid4().hex[:12]}"
        self.staging.mkdir(parents=True)
        self.files = {f.path: f for f in header.files}
        self._written: dict[str, int] = {}
        self._hashes: dict[str, hashlib._Hash] = {}
        self._handles: dict[str, object] = {}

    def write(self, path: str, offset: int, data: bytes) -> None:
        """Append ``data`` at ``offset`` of ``path``. Raises InvalidArgument (unknown path, offset
        out of order, more bytes than declared), ResourceExhausted (reason DISK_FULL)."""
        f = self.files.get(path)
        if f is None:
            raise InvalidArgument(f"chunk for {path!r}, which the header does not list",
                                  field_violations=[("chunk.path", "not in header.files")])
        pos = self._written.get(path, 0)
        if offset != pos:
            raise InvalidArgument(f"{path}: chunk at offset {offset}, expected {pos} (chunks must be in order)",
                                  field_violations=[("chunk.offset", f"expected {pos}")])
        if pos + len(data) > f.size:
            raise InvalidArgument(f"{path}: more than the declared {f.size} bytes",
                                  field_violations=[("chunk.data", f"exceeds size_bytes {f.size}")])
        fh = self._handles.get(path)
        if fh is None:
            dest = self.staging / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            fh = open(dest, "wb")  # noqa: SIM115 - closed in commit/abort
            self._handles[path] = fh
            self._hashes[path] = hashlib.sha256()
        try:
            fh.write(data)  # type: ignore[attr-defined]
        except OSError as e:
            if is_disk_full(e):
                raise disk_full(self.staging / path) from e
            raise
        self._hashes[path].update(data)
        self._written[path] = pos + len(data)

    def commit(self) -> ModelRecord:
        """Check every file (size and sha256) and register the model. Files never sent whose
        blob the cache already holds are taken from it. Raises InvalidArgument (incomplete or
        mismatching files; nothing is registered)."""
        store = self.store
        for fh in self._handles.values():
            fh.flush()  # type: ignore[attr-defined]
            os.fsync(fh.fileno())  # type: ignore[attr-defined]  # on disk before it becomes a blob
            fh.close()  # type: ignore[attr-defined]
        self._handles.clear()
        entries = []
        for i, f in enumerate(self.header.files):
            dest = self.staging / f.path
            if f.path not in self._hashes:
                if store.has_blob(f.sha256, f.size):
                    store.link_into(f.sha256, dest)
                    entries.append(FileEntry(f.path, f.size, f.sha256, None))
                    continue
                if f.size == 0:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(b"")
                    self._hashes[f.path] = hashlib.sha256()
                    self._written[f.path] = 0
                else:
                    raise InvalidArgument(f"{f.path}: no data received",
                                          field_violations=[(f"header.files[{i}]", "no data received")],
                                          reason="NO_DATA_RECEIVED")
            got = self._written.get(f.path, 0)
            if got != f.size:
                raise InvalidArgument(f"{f.path}: received {got} of {f.size} bytes",
                                      field_violations=[(f"header.files[{i}].size_bytes", f"received {got}")])
            digest = self._hashes[f.path].hexdigest()
            if digest != f.sha256:
                raise InvalidArgument(f"{f.path}: sha256 {digest} does not match the declared {f.sha256}",
                                      field_violations=[(f"header.files[{i}].sha256", f"content hashes to {digest}")],
                                      reason="CHECKSUM_MISMATCH")
            store.adopt_blob(dest, digest)
            entries.append(FileEntry(f.path, f.size, digest, None))
        h = self.header
        lock = store.model_lock(h.model_id)
        lock.acquire(timeout=600)
        try:
            existing = store.get_model(h.model_id)
            if existing is not None and not h.overwrite:
                raise AlreadyExists(f"models/{h.model_id} exists; upload with overwrite to replace it",
                                    reason="MODEL_EXISTS", field_violations=[("header.model_id", "exists")])
            now = time.time()
            rec = ModelRecord(id=h.model_id, format=h.format, source="upload", revision="", files=entries,
                              path=Path(), lineage=h.lineage, labels=dict(h.labels), request={"upload": True},
                              create_time=now, last_used_time=now)
            out = self.catalogue.commit(rec, self.staging)
        finally:
            lock.release()
        return out

    def abort(self) -> None:
        """Drop what was received (nothing is registered)."""
        for fh in self._handles.values():
            with contextlib.suppress(Exception):
                fh.close()  # type: ignore[attr-defined]
        self._handles.clear()
        self.store.remove_tree(self.staging)


# =============================================================================================
