"""VerifyModel: every file of a model hashed again; with repair, missing or corrupt files are
restored from an intact blob or fetched again from their origin (GGUF-derived files by
converting the GGUF again)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from swiftmesh.runtime.durable import fsync_dir, fsync_file
from swiftmesh.runtime.errors import SwiftMeshError

from . import gguf_import
from .catalogue import Catalogue
from .download import Fetcher, PullCancelled
from .store import FileEntry, ModelRecord, Store

log = logging.getLogger("swiftmesh.hub")


@dataclass
class FileCheck:
    """What verification found for one file: ``status`` is ok, corrupt, missing or repaired."""

    path: str
    status: str  # ok | corrupt | missing | repaired
    expected_sha256: str
    actual_sha256: str = ""


class Verifier:
    """Verification and repair of the models of one cache (``fetcher`` re-fetches damaged files)."""

    def __init__(self, store: Store, catalogue: Catalogue, fetcher: Fetcher) -> None:
        self.store = store
        self.catalogue = catalogue
        self.fetcher = fetcher

    def verify(self, name: str, repair: bool = False) -> tuple[ModelRecord, bool, list[FileCheck]]:
        """Re-hash every file of a model. With ``repair``, missing or corrupt files are restored
        from an intact blob or fetched again from their origin (GGUF-derived files by converting
        again). Returns (model, all ok, per-file results). Raises NotFound."""
        rec = self.catalogue.get(name, touch=False)
        lock = self.store.model_lock(rec.id)
        lock.acquire(timeout=600)
        try:
            rec = self.catalogue.get(name, touch=False)
            results: list[FileCheck] = []
            bad: list[tuple[FileEntry, FileCheck]] = []
            for e in rec.files:
                p = rec.path / e.path
                if not p.is_file():
                    check = FileCheck(e.path, "missing", e.sha256)
                else:
                    actual = sha256_file(p)
                    check = FileCheck(e.path, "ok" if actual == e.sha256 else "corrupt", e.sha256, actual)
                results.append(check)
                if check.status != "ok":
                    bad.append((e, check))
            if repair and bad:
                self._repair(rec, bad)
            ok = all(c.status in ("ok", "repaired") for c in results)
            return rec, ok, results
        finally:
            lock.release()

    def _repair(self, rec: ModelRecord, bad: list[tuple[FileEntry, FileCheck]]) -> None:
        gguf_rebuilt: Path | None = None
        work = self.store.tmp_dir / f"repair-{uuid.uuid4().hex[:8]}"
        work.mkdir(parents=True)
        try:
            for e, check in bad:
                blob = self.store.blob_path(e.sha256)
                here = rec.path / e.path
                candidate: Path | None = None
                # an intact blob that is not the damaged file itself (a separate copy) is enough
                if (blob.is_file() and not (here.exists() and os.path.samefile(blob, here))
                        and sha256_file(blob) == e.sha256):
                    candidate = blob
                if candidate is None and e.origin:
                    try:
                        if e.origin.get("kind") == "gguf":
                            if gguf_rebuilt is None:
                                gguf_rebuilt = self._rebuild_gguf(e.origin, work)
                            src = gguf_rebuilt / e.path
                            if src.is_file() and sha256_file(src) == e.sha256:
                                candidate = src
                        else:
                            part = work / f"{e.sha256}.part"
                            self.fetcher.fetch(e.origin, part, size=e.size, sha256=e.sha256)
                            candidate = part
                    except SwiftMeshError as err:
                        log.warning("repair of models/%s/%s failed: %s", rec.id, e.path, err.message)
                        check.actual_sha256 = check.actual_sha256 or ""
                if candidate is None:
                    continue
                self._replace_content(e.sha256, candidate)
                check.status = "repaired"
                check.actual_sha256 = e.sha256
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _replace_content(self, sha256: str, good: Path) -> None:
        """Install verified content as blob ``sha256`` and in every model directory that uses it."""
        with self.store.state_lock():
            blob = self.store.blob_path(sha256)
            blob.parent.mkdir(parents=True, exist_ok=True)
            if not (blob.exists() and os.path.samefile(good, blob)):
                tmp = blob.with_name(f".{blob.name}.{uuid.uuid4().hex[:8]}")
                try:
                    os.link(good, tmp)
                except OSError:
                    shutil.copyfile(good, tmp)
                tmp.chmod(0o444)
                fsync_file(tmp)
                os.replace(tmp, blob)
                fsync_dir(blob.parent)
            for _model, snap, path in self.store.models_using(sha256):
                self.store.link_into(sha256, Path(snap) / path)
                fsync_dir((Path(snap) / path).parent)

    def _rebuild_gguf(self, origin: dict, work: Path) -> Path:
        src_origin = origin["gguf"]
        if src_origin["kind"] == "local":
            gguf_path = Path(src_origin["path"])
        else:
            gguf_path = work / origin.get("gguf_file", "model.gguf")
            part = work / "gguf.part"
            self.fetcher.fetch(src_origin, part, sha256=origin.get("gguf_sha256"))
            os.replace(part, gguf_path)
        out = work / "converted"
        gguf_import.convert_gguf(gguf_path, out, None)
        return out


def sha256_file(path: Path, cancel: threading.Event | None = None) -> str:
    """The sha256 (hex) of a file, read 4 MiB at a time. Raises PullCancelled once ``cancel`` is set."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            if cancel is not None and cancel.is_set():
                raise PullCancelled()
            h.update(chunk)
    return h.hexdigest()
