"""The hub's domain: pulls into the verified cache, the model catalogue, verification, reads
and uploads. No gRPC here; the servicer translates. Blocking code: call it from threads.

Guarantees:

* A model is visible (GetModel/ListModels) only after every file is complete, hashed and
  linked; a force re-pull replaces the old snapshot atomically (readers of the old snapshot
  keep their open files).
* Pulls resume: partial downloads stay in ``tmp/`` across crashes and ``kill -9``; complete
  files are blobs, found again by hash (or by a fetch record when the source gives no hash).
* Concurrent pulls of one model do one transfer: in one process they share a :class:`PullJob`;
  across processes the model's file lock lets one pull run while the others follow its
  published progress and then find the committed model.
* With ``hub.quota_bytes`` set, room is made before downloading by dropping orphan blobs and then
  least-recently-used unpinned models; if even that is not enough, ResourceExhausted and nothing
  is downloaded or evicted.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import contextlib
import dataclasses
import enum
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout
from prometheus_client import Counter

from swiftmesh.runtime.host import machine_id
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.errors import (
    AlreadyExists,
    Cancelled,
    DataLoss,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SwiftMeshError,
)

from .download import Fetcher, PullCancelled
from swiftmesh.names import parse_resource_name, validate_file_path, validate_model_id
from .sources import (
    Plan,
    PlannedFile,
    SourceContext,
    default_model_id,
    hf_headers,
    is_pickle,
    ms_headers,
    resolve,
)
from .store import FileEntry, Lineage, ModelFormat, ModelRecord, Store

log = logging.getLogger("swiftmesh.hub")

BYTES_FETCHED = Counter("swiftmesh_hub_bytes_fetched_total", "Bytes the hub transferred from sources.", ["kind"])
BYTES_SERVED = Counter("swiftmesh_hub_bytes_served_total", "Bytes the hub served through ReadModelFile.")
PULLS = Counter("swiftmesh_hub_pulls_total", "Pulls by result.", ["result"])

MAX_CHUNK = 4 << 20
DEFAULT_CHUNK = 1 << 20
PROGRESS_EVERY_S = 0.1
PROGRESS_FILE_EVERY_S = 0.4
STALE_PART_S = 7 * 24 * 3600


class Stage(enum.IntEnum):
    """Mirror of ``PullProgress.Stage``."""

    UNSPECIFIED = 0
    RESOLVING = 1
    DOWNLOADING = 2
    VERIFYING = 3
    CONVERTING = 4
    COMMITTING = 5


@dataclass
class Progress:
    """A pull's progress (bytes and files done/total, rate in bytes/s, ETA in seconds)."""

    stage: Stage = Stage.UNSPECIFIED
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    bytes_per_second: float = 0.0
    eta_s: float | None = None
    current_file: str = ""
    following: bool = False
    bytes_resumed: int = 0


@dataclass
class PullRequest:
    """The domain form of ``PullModelRequest``."""

    source: str
    model_id: str = ""
    revision: str = ""
    allow_patterns: list[str] = field(default_factory=list)
    ignore_patterns: list[str] = field(default_factory=list)
    allow_pickle: bool = False
    force: bool = False
    lineage: Lineage = field(default_factory=Lineage)
    labels: dict[str, str] = field(default_factory=dict)
    pin: str = ""
    format: ModelFormat = ModelFormat.UNSPECIFIED


@dataclass
class FileCheck:
    path: str
    status: str  # ok | corrupt | missing | repaired
    expected_sha256: str
    actual_sha256: str = ""


@dataclass
class UploadHeader:
    model_id: str
    format: ModelFormat
    files: list[FileEntry]
    lineage: Lineage = field(default_factory=Lineage)
    labels: dict[str, str] = field(default_factory=dict)
    overwrite: bool = False


# =============================================================================================
# Pull jobs: one per model in flight in this process, shared by every request for it
# =============================================================================================
class PullJob:
    """A pull running in a thread. Requests subscribe to its progress; when the last subscriber
    leaves before it finishes, it is cancelled (its partial files stay for a later resume)."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.future: concurrent.futures.Future[ModelRecord] = concurrent.futures.Future()
        self.cancel = threading.Event()
        self._lock = threading.Lock()
        self._subs: dict[int, tuple[Callable[[Progress], None], bool]] = {}
        self._next = 0
        self.latest: Progress | None = None
        self.ever_subscribed = False

    def subscribe(self, callback: Callable[[Progress], None], following: bool = False) -> int:
        with self._lock:
            token = self._next
            self._next += 1
            self._subs[token] = (callback, following)
            self.ever_subscribed = True
            latest = self.latest
        if latest is not None:
            callback(dataclasses.replace(latest, following=latest.following or following))
        return token

    def unsubscribe(self, token: int) -> None:
        with self._lock:
            self._subs.pop(token, None)
            empty = not self._subs
        if empty and not self.future.done():
            log.info("pull of %s: no client left, cancelling (partial files are kept)", self.model_id)
            self.cancel.set()

    def publish(self, progress: Progress) -> None:
        with self._lock:
            self.latest = progress
            subs = list(self._subs.values())
        for cb, following in subs:
            try:
                cb(dataclasses.replace(progress, following=progress.following or following))
            except Exception:
                log.exception("progress subscriber failed")


def _done_job(model_id: str, rec: ModelRecord) -> PullJob:
    job = PullJob(model_id)
    job.future.set_result(rec)
    return job


class Tracker:
    """Counts a pull's bytes and files, computes rate and ETA over a sliding window, publishes to
    the job (every 0.1 s at most) and to the progress file other hub processes follow."""

    def __init__(self, job: PullJob, progress_file: Path, files: list[PlannedFile]) -> None:
        self.job = job
        self.progress_file = progress_file
        self.p = Progress(stage=Stage.RESOLVING, files_total=len(files),
                          bytes_total=sum(f.size or 0 for f in files))
        self._lock = threading.Lock()
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._transferred = 0
        self._last_emit = 0.0
        self._last_file = 0.0
        self._active: dict[str, int] = {}

    def stage(self, stage: Stage, current: str = "") -> None:
        with self._lock:
            self.p.stage = stage
            if current:
                self.p.current_file = current
        self.emit(force=True)

    def resumed(self, n: int) -> None:
        with self._lock:
            self.p.bytes_resumed += n
            self.p.bytes_done += n
        self.emit()

    def add(self, n: int) -> None:
        with self._lock:
            self.p.bytes_done += n
            self._transferred += n
        now = time.monotonic()
        if now - self._last_emit >= PROGRESS_EVERY_S:
            self.emit()

    def start_file(self, path: str) -> None:
        with self._lock:
            self._active[path] = 1
            self.p.current_file = path

    def file_done(self, path: str, size: int, known_size: int | None, counted: bool = True) -> None:
        with self._lock:
            self.p.files_done += 1
            self._active.pop(path, None)
            if known_size is None:
                self.p.bytes_total += size
                if not counted:
                    self.p.bytes_done += size
            if self._active:
                self.p.current_file = next(iter(self._active))
        self.emit()

    def skip_file(self, path: str, size: int, known_size: int | None, resumed: bool = True) -> None:
        """A file that needs no transfer (in the cache by hash: counted as resumed; or a local file)."""
        with self._lock:
            self.p.bytes_done += size
            if resumed:
                self.p.bytes_resumed += size
            if known_size is None:
                self.p.bytes_total += size
            self.p.files_done += 1
        self.emit()

    def snapshot(self) -> Progress:
        now = time.monotonic()
        with self._lock:
            self._samples.append((now, self._transferred))
            while len(self._samples) > 2 and now - self._samples[0][0] > 5.0:
                self._samples.popleft()
            t0, b0 = self._samples[0]
            rate = (self._transferred - b0) / (now - t0) if now - t0 > 0.2 else self.p.bytes_per_second
            self.p.bytes_per_second = max(rate, 0.0)
            remaining = max(self.p.bytes_total - self.p.bytes_done, 0)
            self.p.eta_s = remaining / rate if rate > 0 else None
            return dataclasses.replace(self.p)

    def emit(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_emit < PROGRESS_EVERY_S:
            return
        self._last_emit = now
        snap = self.snapshot()
        self.job.publish(snap)
        if force or now - self._last_file >= PROGRESS_FILE_EVERY_S:
            self._last_file = now
            with contextlib.suppress(OSError):
                tmp = self.progress_file.with_name(f".{self.progress_file.name}.{os.getpid()}.{threading.get_ident()}")
                d = dataclasses.asdict(snap)
                d["pid"] = os.getpid()
                tmp.write_text(json.dumps(d))
                os.replace(tmp, self.progress_file)


def _progress_from_file(path: Path) -> Progress | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    d.pop("pid", None)
    try:
        p = Progress(**d)
        p.stage = Stage(p.stage)
    except (TypeError, ValueError):
        return None
    p.following = True
    return p


# =============================================================================================
# The hub
# =============================================================================================
class Hub:
    """Domain object of one hub process over one cache directory (shareable by several processes).

    Args:
        settings: uses ``hub_cache_dir`` and the ``hub`` section (quota, endpoints, retries,
            download concurrency, local source roots).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        hs = settings.hub
        self.store = Store(settings.hub_cache_dir)
        self.host_id = f"{machine_id()}|{self.store.cache_id}"
        self.ctx = SourceContext(
            fetcher=None,  # set below
            hf_endpoint=hs.hf_endpoint,
            hf_token=hs.hf_token.get_secret_value() if hs.hf_token else None,
            ms_endpoint=hs.ms_endpoint,
            ms_token=(hs.ms_token.get_secret_value() if getattr(hs, "ms_token", None) else None),
            local_roots=getattr(hs, "local_source_roots", None),
            hub_settings=settings,
        )
        self.fetcher = Fetcher(retries=hs.download_retries, header_provider=self._headers_for, hub_settings=settings)
        self.ctx.fetcher = self.fetcher
        self.concurrency = hs.download_concurrency
        self._jobs: dict[str, PullJob] = {}
        self._jobs_lock = threading.Lock()
        self._closing = threading.Event()

    def close(self, timeout: float = 10.0) -> None:
        """Cancel pulls in flight (their partial files stay) and wait up to ``timeout`` s for them."""
        self._closing.set()
        with self._jobs_lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel.set()
        concurrent.futures.wait([j.future for j in jobs], timeout=timeout)
        self.fetcher.close()

    def housekeeping(self) -> None:
        """Remove what interrupted work left that nothing will resume: staging directories of
        pulls no process runs (their model lock is free), snapshot directories no model row
        references, upload/repair/conversion scratch older than a day, and partial downloads
        untouched for a week."""
        store = self.store
        now = time.time()
        for d in list(store.staging_dir.iterdir()):
            name = d.name
            if name.startswith("pull-") and d.is_dir():
                lock = FileLock(str(store.locks_dir / f"model-{name[len('pull-'):]}.lock"), thread_local=False)
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue
                try:
                    store.remove_tree(d)
                    with contextlib.suppress(OSError):
                        (store.staging_dir / f"{name}.progress.json").unlink()
                finally:
                    lock.release()
            elif (name.startswith(("upload-", ".trash-")) and d.is_dir()
                  and now - d.stat().st_mtime > 24 * 3600):
                store.remove_tree(d)
        for d in list(store.tmp_dir.iterdir()):
            with contextlib.suppress(OSError):
                age = now - d.stat().st_mtime
                if d.is_dir() and age > 24 * 3600:
                    shutil.rmtree(d, ignore_errors=True)
                elif d.is_file() and age > STALE_PART_S:
                    d.unlink()
        with store.connect() as db:
            referenced = {Path(p) for (p,) in db.execute("SELECT path FROM models")}
            ids = {m for (m,) in db.execute("SELECT id FROM models")}
        for org in list(store.models_dir.iterdir()) if store.models_dir.exists() else []:
            for name_dir in list(org.iterdir()) if org.is_dir() else []:
                model_id = name_dir.name if org.name == "_" else f"{org.name}/{name_dir.name}"
                lock = store.model_lock(model_id)
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue
                try:
                    for snap in list(name_dir.iterdir()):
                        if snap not in referenced:
                            store.remove_tree(snap)
                    if model_id not in ids:
                        with contextlib.suppress(OSError):
                            name_dir.rmdir()
                finally:
                    lock.release()

    def _headers_for(self, origin: dict) -> dict[str, str]:
        auth = origin.get("auth")
        if auth == "hf":
            return hf_headers(self.ctx)
        if auth == "ms":
            return ms_headers(self.ctx)
        return {}

    # -- catalogue ------------------------------------------------------------------------
    def get(self, name: str, *, field: str = "name", touch: bool = True) -> ModelRecord:
        """The model ``models/{id}``. Raises InvalidArgument (bad name), NotFound."""
        model_id = parse_resource_name(name, field)
        rec = self.store.get_model(model_id)
        if rec is None:
            raise NotFound(f"model models/{model_id} not found", reason="MODEL_NOT_FOUND",
                           metadata={"model": f"models/{model_id}"})
        if touch:
            now = time.time()
            self.store.touch(model_id, now)
            rec.last_used_time = now
        return rec

    def list(
        self, *, formats: list[int] = (), base_model: str = "", parent_model: str = "",  # type: ignore[assignment]
        page_size: int = 0, page_token: str = "",
    ) -> tuple[list[ModelRecord], str]:
        """Models newest first, filtered; page_size default 50, at most 1000. Returns (models,
        next_page_token). Raises InvalidArgument for a negative page_size or a bad/foreign token."""
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", field_violations=[("page_size", "negative")])
        size = min(page_size or 50, 1000)
        for f in formats:
            if f not in ModelFormat.__members__.values() or f == 0:
                raise InvalidArgument(f"unknown format {f}", field_violations=[("formats", f"unknown value {f}")])
        base = f"models/{parse_resource_name(base_model, 'base_model')}" if base_model else ""
        parent = f"models/{parse_resource_name(parent_model, 'parent_model')}" if parent_model else ""
        fingerprint = hashlib.sha256(json.dumps([sorted(formats), base, parent]).encode()).hexdigest()[:12]
        offset = 0
        if page_token:
            try:
                tok = json.loads(base64.urlsafe_b64decode(page_token.encode()).decode())
                offset = int(tok["o"])
                if tok["f"] != fingerprint or offset < 0:
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                raise InvalidArgument("page_token is invalid or belongs to a different query",
                                      field_violations=[("page_token", "invalid for this query")]) from None
        models, more = self.store.list_models(list(formats), base, parent, offset, size)
        token = ""
        if more:
            token = base64.urlsafe_b64encode(json.dumps({"o": offset + size, "f": fingerprint}).encode()).decode()
        return models, token

    def pin(self, name: str, holder: str) -> ModelRecord:
        """Pin for ``holder`` (idempotent). Raises InvalidArgument (empty holder), NotFound."""
        if not holder or len(holder) > 256:
            raise InvalidArgument("holder is required (at most 256 characters), e.g. 'jobs/abc'",
                                  field_violations=[("holder", "required, at most 256 characters")])
        model_id = parse_resource_name(name)
        with self.store.transaction() as db:
            if db.execute("SELECT 1 FROM models WHERE id=?", (model_id,)).fetchone() is None:
                raise NotFound(f"model models/{model_id} not found", reason="MODEL_NOT_FOUND")
            self.store.add_pin(db, model_id, holder)
        return self.get(name)

    def unpin(self, name: str, holder: str) -> ModelRecord:
        """Remove ``holder``'s pin (no-op when it holds none). Raises NotFound."""
        if not holder:
            raise InvalidArgument("holder is required", field_violations=[("holder", "required")])
        rec = self.get(name, touch=False)
        self.store.remove_pin(rec.id, holder)
        return self.get(name, touch=False)

    def delete(self, name: str, force: bool = False, *, lock_timeout: float = 30.0) -> None:
        """Delete a model; blobs that other models use stay. Raises NotFound, FailedPrecondition
        (pinned and not ``force``; reason MODEL_PINNED), Aborted-like FailedPrecondition when a
        pull of it holds its lock for more than ``lock_timeout`` s."""
        model_id = parse_resource_name(name)
        lock = self.store.model_lock(model_id)
        try:
            lock.acquire(timeout=lock_timeout)
        except Timeout:
            raise FailedPrecondition(f"models/{model_id} is being pulled or verified; retry later",
                                     reason="MODEL_BUSY", retry_after=5) from None
        try:
            rec = self.store.get_model(model_id)
            if rec is None:
                raise NotFound(f"model models/{model_id} not found", reason="MODEL_NOT_FOUND")
            if rec.pins and not force:
                raise FailedPrecondition(
                    f"models/{model_id} is pinned by {', '.join(rec.pins)}; unpin it or delete with force",
                    reason="MODEL_PINNED", metadata={"holders": ",".join(rec.pins)},
                )
            self._remove_model(model_id)
        finally:
            lock.release()

    def _remove_model(self, model_id: str) -> int:
        """Drop rows, directory and unshared blobs of a model (caller holds its model lock).
        Returns the bytes of blobs freed."""
        with self.store.state_lock():
            sizes = self.store.blob_sizes()
            with self.store.transaction() as db:
                unref = self.store.delete_model_rows(db, model_id)
            self.store.unlink_blobs(unref)
            self.store.remove_tree(self.store.model_root(model_id))
            with contextlib.suppress(OSError):
                self.store.model_root(model_id).parent.rmdir()  # the org directory, when empty
        log.info("removed models/%s (%d bytes of blobs freed)", model_id, sum(sizes.get(s, 0) for s in unref))
        return sum(sizes.get(s, 0) for s in unref)

    # -- quota ------------------------------------------------------------------------------
    def _make_room(self, needed: int, keep_model: str, keep_shas: set[str]) -> None:
        """Ensure blobs + ``needed`` bytes fit the quota: drop orphan blobs, then LRU unpinned
        models (never ``keep_model`` nor models busy in another pull). Raises ResourceExhausted
        (reason QUOTA_EXCEEDED) without evicting anything when even that would not be enough."""
        quota = self.settings.hub.quota_bytes
        if not quota:
            return
        with self.store.state_lock():
            usage, orphans = self.store.blob_usage()
            if usage + needed <= quota:
                return
            orphan_bytes = sum(s for p, s in orphans if p.name not in keep_shas)
            refs = self.store.blob_refs()
            sizes = self.store.blob_sizes()
            candidates = [m for m, _ in self.store.eviction_candidates({keep_model})]
            # plan: which models to evict, in LRU order, until it fits
            removed: set[str] = set()
            freed = orphan_bytes
            chosen: list[str] = []
            for m in candidates:
                if usage + needed - freed <= quota:
                    break
                removed.add(m)
                chosen.append(m)
                freed = orphan_bytes + sum(
                    sizes.get(sha, 0) for sha, users in refs.items() if users <= removed and sha not in keep_shas
                )
            if usage + needed - freed > quota:
                raise ResourceExhausted(
                    f"models/{keep_model} needs {needed} more bytes; the cache holds {usage} of its {quota} byte quota "
                    f"and evicting every unpinned model would free only {freed}",
                    reason="QUOTA_EXCEEDED",
                    metadata={"needed_bytes": str(needed), "quota_bytes": str(quota), "used_bytes": str(usage)},
                )
            for p, _ in orphans:
                if p.name not in keep_shas:
                    with contextlib.suppress(OSError):
                        if p.stat().st_nlink <= 1:
                            p.unlink()
            for m in chosen:
                if self.store.blob_usage()[0] + needed <= quota:
                    break
                lock = self.store.model_lock(m)
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue
                try:
                    rec = self.store.get_model(m)
                    if rec is not None and not rec.pins:
                        log.info("quota: evicting models/%s (last used %s)", m, time.ctime(rec.last_used_time))
                        self._remove_model_locked_state(m)
                finally:
                    lock.release()
            if self.store.blob_usage()[0] + needed > quota:
                raise ResourceExhausted(
                    f"models/{keep_model} needs {needed} more bytes and the {quota} byte quota is full "
                    "(models in use elsewhere could not be evicted)",
                    reason="QUOTA_EXCEEDED", retry_after=30,
                )

    def _remove_model_locked_state(self, model_id: str) -> None:
        """Like _remove_model, for callers already holding the state lock."""
        with self.store.transaction() as db:
            unref = self.store.delete_model_rows(db, model_id)
        self.store.unlink_blobs(unref)
        self.store.remove_tree(self.store.model_root(model_id))
        with contextlib.suppress(OSError):
            self.store.model_root(model_id).parent.rmdir()

    # -- pull -------------------------------------------------------------------------------
    def start_pull(self, req: PullRequest) -> tuple[PullJob, bool]:
        """Validate ``req`` and start (or join) the pull. Returns (job, following): ``following``
        is True when another request of this process already runs the pull. A model already
        present (same source, no ``force``) gives a finished job at once.

        Raises InvalidArgument (source, model_id, lineage, labels), AlreadyExists (the id holds
        a model from another source and ``force`` is not set).
        """
        if self._closing.is_set():
            raise FailedPrecondition("the hub is shutting down", reason="SHUTTING_DOWN")
        model_id = validate_model_id(req.model_id, "model_id") if req.model_id else default_model_id(req.source)
        model_id = validate_model_id(model_id, "model_id" if req.model_id else "source")
        _validate_lineage(req.lineage, "lineage")
        _validate_labels(req.labels, "labels")
        if req.format not in ModelFormat.__members__.values():
            raise InvalidArgument(f"unknown format {req.format}", field_violations=[("format", "unknown value")])
        req.model_id = model_id
        if not req.force:
            rec = self.store.get_model(model_id)
            if rec is not None:
                self._check_same_source(rec, req)
                return _done_job(model_id, rec), False
        with self._jobs_lock:
            job = self._jobs.get(model_id)
            if job is not None and not job.future.done() and not job.cancel.is_set():
                return job, True
            job = PullJob(model_id)
            self._jobs[model_id] = job
        t = threading.Thread(target=self._run_pull, args=(job, req), name=f"pull-{model_id}", daemon=True)
        t.start()
        return job, False

    def finish_pull(self, req: PullRequest, rec: ModelRecord) -> ModelRecord:
        """Apply what one request asks beyond the transfer (its pin and labels), touch the model,
        and return its current record."""
        with self.store.transaction() as db:
            if req.pin:
                self.store.add_pin(db, rec.id, req.pin)
            if req.labels:
                row = db.execute("SELECT labels FROM models WHERE id=?", (rec.id,)).fetchone()
                if row is not None:
                    labels = {**json.loads(row[0]), **req.labels}
                    db.execute("UPDATE models SET labels=? WHERE id=?", (json.dumps(labels, sort_keys=True), rec.id))
            db.execute("UPDATE models SET last_used_time=? WHERE id=?", (time.time(), rec.id))
        out = self.store.get_model(rec.id)
        if out is None:  # deleted meanwhile
            raise NotFound(f"models/{rec.id} was deleted right after the pull", reason="MODEL_NOT_FOUND")
        return out

    def pull(self, req: PullRequest, on_progress: Callable[[Progress], None] | None = None) -> ModelRecord:
        """Blocking pull (start, follow, finish). For tests, scripts and the CLI's local mode."""
        job, following = self.start_pull(req)
        token = job.subscribe(on_progress or (lambda p: None), following)
        try:
            rec = job.future.result()
        finally:
            job.unsubscribe(token)
        return self.finish_pull(req, rec)

    def _check_same_source(self, rec: ModelRecord, req: PullRequest) -> None:
        if rec.source != req.source:
            raise AlreadyExists(
                f"models/{rec.id} exists, pulled from {rec.source}; pull {req.source} with force to replace it, "
                "or choose another model_id",
                reason="MODEL_EXISTS",
                field_violations=[("model_id", f"already holds {rec.source}")],
            )

    def _run_pull(self, job: PullJob, req: PullRequest) -> None:
        try:
            rec = self._pull(job, req)
        except BaseException as e:
            PULLS.labels("cancelled" if isinstance(e, Cancelled) else "error").inc()
            if not isinstance(e, SwiftMeshError):
                log.exception("pull of %s failed", req.source)
            job.future.set_exception(e)
        else:
            PULLS.labels("ok").inc()
            job.future.set_result(rec)
        finally:
            with self._jobs_lock:
                if self._jobs.get(job.model_id) is job:
                    del self._jobs[job.model_id]

    def _acquire_following(self, lock, job: PullJob, model_id: str, what: str, publish: bool = True) -> None:
        """Take a file lock, giving up when the job is cancelled. While another process holds a
        model lock (``publish``), relay that process's published progress as ``following``."""
        waited = False
        while True:
            if job.cancel.is_set():
                raise PullCancelled()
            try:
                lock.acquire(timeout=0.2)
                return
            except Timeout:
                if not waited:
                    log.info("%s: another pull holds it; waiting", what)
                    waited = True
                if publish:
                    p = _progress_from_file(self.store.progress_path(model_id))
                    job.publish(p or Progress(stage=Stage.DOWNLOADING, following=True))

    def _pull(self, job: PullJob, req: PullRequest) -> ModelRecord:
        model_id = req.model_id
        started = time.time()
        lock = self.store.model_lock(model_id)
        self._acquire_following(lock, job, model_id, f"models/{model_id}")
        staging = self.store.staging_path(model_id)
        progress_file = self.store.progress_path(model_id)
        try:
            existing = self.store.get_model(model_id)
            if existing is not None and (not req.force or existing.create_time >= started):
                # committed by another process while this one waited
                if not req.force:
                    self._check_same_source(existing, req)
                return existing
            job.publish(Progress(stage=Stage.RESOLVING))
            t_resolve = time.monotonic()
            plan = resolve(
                req.source, self.ctx, revision=req.revision, allow_patterns=req.allow_patterns,
                ignore_patterns=req.ignore_patterns, allow_pickle=req.allow_pickle, requested_format=req.format,
            )
            transfer = plan.files if plan.gguf is None else [plan.gguf]
            tracker = Tracker(job, progress_file, transfer)
            needed = sum(f.size or 0 for f in transfer if not (f.sha256 and self.store.has_blob(f.sha256)))
            self._make_room(needed, model_id, {f.sha256 for f in transfer if f.sha256})
            self.store.remove_tree(staging)
            staging.mkdir(parents=True)
            tracker.stage(Stage.DOWNLOADING)
            t_transfer = time.monotonic()
            if plan.gguf is None:
                entries = self._transfer_all(job, tracker, transfer, staging)
            else:
                entries = self._pull_gguf(job, tracker, plan, staging)
            tracker.stage(Stage.COMMITTING)
            rec = ModelRecord(
                id=model_id, format=plan.format, source=req.source, revision=plan.revision, files=entries,
                path=Path(), lineage=req.lineage, labels=dict(req.labels),
                request={"source": req.source, "revision": req.revision, "allow_patterns": req.allow_patterns,
                         "ignore_patterns": req.ignore_patterns, "allow_pickle": req.allow_pickle,
                         "skipped_pickle": plan.skipped_pickle},
                create_time=time.time(), last_used_time=time.time(),
            )
            t_commit = time.monotonic()
            out = self._commit(rec, staging)
            snap = tracker.snapshot()
            log.info("pulled models/%s from %s: %d files, %d bytes (%d transferred, %d already here); resolve %.2fs, "
                     "transfer %.2fs, commit %.2fs", model_id, req.source, len(rec.files), rec.size_bytes,
                     snap.bytes_done - snap.bytes_resumed, snap.bytes_resumed, t_transfer - t_resolve,
                     t_commit - t_transfer, time.monotonic() - t_commit)
            return out
        finally:
            with contextlib.suppress(OSError):
                progress_file.unlink()
            if staging.exists():
                self.store.remove_tree(staging)
            lock.release()

    def _transfer_all(self, job: PullJob, tracker: Tracker, files: list[PlannedFile], staging: Path) -> list[FileEntry]:
        """Bring every file into ``staging`` (up to ``download_concurrency`` at once)."""
        entries: list[FileEntry] = []
        with concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="fetch") as pool:
            futures = [pool.submit(self._bring, job, tracker, f, staging / f.path) for f in files]
            try:
                for fut in concurrent.futures.as_completed(futures):
                    entries.append(fut.result())
            except BaseException:
                job.cancel.set()  # stop the other transfers; partial files stay
                concurrent.futures.wait(futures)
                raise
        order = {f.path: i for i, f in enumerate(files)}
        return sorted(entries, key=lambda e: order[e.path])

    def _bring(self, job: PullJob, tracker: Tracker, pf: PlannedFile, dest: Path) -> FileEntry:
        """One file into ``dest``: linked from a blob when its content is known to be in the
        cache, else fetched (resuming) under the transfer's file lock."""
        if job.cancel.is_set():
            raise PullCancelled()
        entry = self._from_cache(pf, dest)
        if entry is not None:
            tracker.skip_file(pf.path, entry.size, pf.size)
            return entry
        lock = self.store.fetch_lock(pf.key)
        self._acquire_following(lock, job, job.model_id, pf.path, publish=False)
        try:
            entry = self._from_cache(pf, dest)  # fetched by another process meanwhile
            if entry is not None:
                tracker.skip_file(pf.path, entry.size, pf.size)
                return entry
            tracker.start_file(pf.path)
            part = self.store.part_path(pf.key)
            result = self.fetcher.fetch(
                pf.origin, part, size=pf.size, sha256=pf.sha256, git_sha1=pf.git_sha1,
                on_bytes=tracker.add, on_resume=tracker.resumed, cancel=job.cancel,
            )
            BYTES_FETCHED.labels(pf.origin.get("kind", "?")).inc(result.transferred)
            self.store.adopt_blob(part, result.sha256)
            if not pf.sha256:
                self.store.record_fetched(pf.key, result.sha256, result.size)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, dest)
            tracker.file_done(pf.path, result.size, pf.size, counted=True)
            return FileEntry(pf.path, result.size, result.sha256, pf.origin)
        finally:
            lock.release()

    def _from_cache(self, pf: PlannedFile, dest: Path) -> FileEntry | None:
        sha, size = pf.sha256, pf.size
        if not sha:
            rec = self.store.fetched(pf.key)
            if rec is None or (pf.size is not None and rec[1] != pf.size):
                return None
            sha, size = rec
        if not self.store.has_blob(sha, size):
            return None
        try:
            self.store.link_into(sha, dest)
        except FileNotFoundError:  # evicted just now
            return None
        return FileEntry(pf.path, dest.stat().st_size, sha, pf.origin)

    def _pull_gguf(self, job: PullJob, tracker: Tracker, plan: Plan, staging: Path) -> list[FileEntry]:
        """Fetch the .gguf (unless it is a local file), convert it into ``staging``, hash the outputs."""
        pf = plan.gguf
        assert pf is not None
        work = self.store.tmp_dir / f"gguf-{uuid.uuid4().hex[:8]}"
        try:
            if pf.origin["kind"] == "local":
                gguf_path = Path(pf.origin["path"])
                tracker.skip_file(pf.path, gguf_path.stat().st_size, pf.size, resumed=False)
                gguf_sha = None
            else:
                lock = self.store.fetch_lock(pf.key)
                self._acquire_following(lock, job, job.model_id, pf.path, publish=False)
                try:
                    tracker.start_file(pf.path)
                    part = self.store.part_path(pf.key)
                    result = self.fetcher.fetch(
                        pf.origin, part, size=pf.size, sha256=pf.sha256, git_sha1=pf.git_sha1,
                        on_bytes=tracker.add, on_resume=tracker.resumed, cancel=job.cancel,
                    )
                    BYTES_FETCHED.labels(pf.origin.get("kind", "?")).inc(result.transferred)
                    work.mkdir(parents=True)
                    gguf_path = work / Path(pf.path).name
                    os.replace(part, gguf_path)
                    gguf_sha = result.sha256
                    tracker.file_done(pf.path, result.size, pf.size)
                finally:
                    lock.release()
            tracker.stage(Stage.CONVERTING, pf.path)
            self._make_room(3 * gguf_path.stat().st_size, job.model_id, set())
            out = staging
            self.store.remove_tree(out)
            convert_gguf(gguf_path, out, job.cancel)
            tracker.stage(Stage.VERIFYING)
            entries = []
            for p in sorted(out.rglob("*")):
                if not p.is_file():
                    continue
                rel = p.relative_to(out).as_posix()
                sha = _sha256_file(p, job.cancel)
                self.store.adopt_blob(p, sha)
                entries.append(FileEntry(rel, p.stat().st_size, sha,
                                         {"kind": "gguf", "gguf": pf.origin, "gguf_sha256": gguf_sha or pf.sha256,
                                          "gguf_file": Path(pf.path).name}))
            plan.revision = plan.revision or (gguf_sha or "")[:12]
            return entries
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)

    def _commit(self, rec: ModelRecord, staging: Path) -> ModelRecord:
        """Make the model visible: snapshot directory in place, then the rows, then old snapshots gone."""
        self._make_room(0, rec.id, {e.sha256 for e in rec.files})
        with self.store.state_lock():
            for e in rec.files:
                if not self.store.has_blob(e.sha256):  # deleted by an eviction meanwhile: we hold the content
                    self.store.adopt_blob(staging / e.path, e.sha256)
            snap = self.store.new_snapshot_path(rec.id)
            snap.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, snap)
            rec.path = snap
            with self.store.transaction() as db:
                self.store.put_model(db, rec)
            for old in self.store.stale_snapshots(rec.id, keep=snap):
                self.store.remove_tree(old)
        log.info("committed models/%s (%d files, %d bytes) from %s", rec.id, len(rec.files), rec.size_bytes, rec.source)
        out = self.store.get_model(rec.id)
        assert out is not None
        return out

    # -- verify -----------------------------------------------------------------------------
    def verify(self, name: str, repair: bool = False) -> tuple[ModelRecord, bool, list[FileCheck]]:
        """Re-hash every file of a model. With ``repair``, missing or corrupt files are restored
        from an intact blob or fetched again from their origin (GGUF-derived files by converting
        again). Returns (model, all ok, per-file results). Raises NotFound."""
        rec = self.get(name, touch=False)
        lock = self.store.model_lock(rec.id)
        lock.acquire(timeout=600)
        try:
            rec = self.get(name, touch=False)
            results: list[FileCheck] = []
            bad: list[tuple[FileEntry, FileCheck]] = []
            for e in rec.files:
                p = rec.path / e.path
                if not p.is_file():
                    check = FileCheck(e.path, "missing", e.sha256)
                else:
                    actual = _sha256_file(p)
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
                        and _sha256_file(blob) == e.sha256):
                    candidate = blob
                if candidate is None and e.origin:
                    try:
                        if e.origin.get("kind") == "gguf":
                            if gguf_rebuilt is None:
                                gguf_rebuilt = self._rebuild_gguf(e.origin, work)
                            src = gguf_rebuilt / e.path
                            if src.is_file() and _sha256_file(src) == e.sha256:
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
                os.replace(tmp, blob)
            for _model, snap, path in self.store.models_using(sha256):
                self.store.link_into(sha256, Path(snap) / path)

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
        convert_gguf(gguf_path, out, None)
        return out

    # -- reads ------------------------------------------------------------------------------
    def open_file(self, name: str, path: str, offset: int = 0, limit: int = 0, chunk_size: int = 0
                  ) -> tuple[FileEntry, Iterator[tuple[int, bytes]]]:
        """A model file's entry and an iterator of (offset, data) chunks from ``offset``, at most
        ``limit`` bytes (0: to the end), ``chunk_size`` bytes each (default 1 MiB, at most 4 MiB).
        Raises InvalidArgument (bad offset/limit/chunk_size/path), NotFound (model or file),
        DataLoss (the cached file is gone; VerifyModel with repair restores it)."""
        if offset < 0:
            raise InvalidArgument("offset must not be negative", field_violations=[("offset", "negative")])
        if limit < 0:
            raise InvalidArgument("limit must not be negative", field_violations=[("limit", "negative")])
        if chunk_size < 0 or chunk_size > MAX_CHUNK:
            raise InvalidArgument(f"chunk_size must be between 0 and {MAX_CHUNK}",
                                  field_violations=[("chunk_size", f"0..{MAX_CHUNK}")])
        rec = self.get(name)
        path = validate_file_path(path, "path")
        entry = next((f for f in rec.files if f.path == path), None)
        if entry is None:
            raise NotFound(f"models/{rec.id} has no file {path!r}", field_violations=[("path", "no such file")],
                           reason="FILE_NOT_FOUND")
        if offset > entry.size:
            raise InvalidArgument(f"offset {offset} is past the end of {path} ({entry.size} bytes)",
                                  field_violations=[("offset", f"file has {entry.size} bytes")])
        chunk = chunk_size or DEFAULT_CHUNK
        end = entry.size if not limit else min(entry.size, offset + limit)
        candidates = [rec.path / path, self.store.blob_path(entry.sha256)]
        fh = None
        for c in candidates:
            try:
                fh = open(c, "rb")  # noqa: SIM115 - closed by the generator
                break
            except OSError:
                continue
        if fh is None:
            raise DataLoss(f"models/{rec.id}/{path} is missing from the cache; run VerifyModel with repair",
                           reason="FILE_MISSING")

        def chunks() -> Iterator[tuple[int, bytes]]:
            pos = offset
            with fh:
                fh.seek(pos)
                while pos < end:
                    data = fh.read(min(chunk, end - pos))
                    if not data:
                        raise DataLoss(f"models/{rec.id}/{path} is shorter than recorded; run VerifyModel",
                                       reason="FILE_TRUNCATED")
                    BYTES_SERVED.inc(len(data))
                    yield pos, data
                    pos += len(data)

        return entry, chunks()

    # -- uploads ----------------------------------------------------------------------------
    def begin_upload(self, header: UploadHeader) -> Upload:
        """Validate an upload header and prepare its staging directory. Raises InvalidArgument
        (fields under ``header``), AlreadyExists (unless overwrite), ResourceExhausted."""
        model_id = validate_model_id(header.model_id, "header.model_id")
        header.model_id = model_id
        _validate_lineage(header.lineage, "header.lineage")
        _validate_labels(header.labels, "header.labels")
        if not header.files:
            raise InvalidArgument("an upload needs at least one file", field_violations=[("header.files", "empty")])
        seen = set()
        for i, f in enumerate(header.files):
            f.path = validate_file_path(f.path, f"header.files[{i}].path")
            if f.path in seen:
                raise InvalidArgument(f"file {f.path} listed twice", field_violations=[(f"header.files[{i}].path", "duplicate")])
            seen.add(f.path)
            if f.size < 0:
                raise InvalidArgument("size must not be negative", field_violations=[(f"header.files[{i}].size_bytes", "negative")])
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
        if not header.overwrite and self.store.get_model(model_id) is not None:
            raise AlreadyExists(f"models/{model_id} exists; upload with overwrite to replace it",
                                reason="MODEL_EXISTS", field_violations=[("header.model_id", "exists")])
        needed = sum(f.size for f in header.files if not self.store.has_blob(f.sha256, f.size))
        self._make_room(needed, model_id, {f.sha256 for f in header.files})
        return Upload(self, header)


class Upload:
    """An upload in progress: chunks in order of offset per file, then :meth:`commit`."""

    def __init__(self, hub: Hub, header: UploadHeader) -> None:
        self.hub = hub
        self.header = header
        self.staging = hub.store.staging_dir / f"upload-{uuid.uuid4().hex[:12]}"
        self.staging.mkdir(parents=True)
        self.files = {f.path: f for f in header.files}
        self._written: dict[str, int] = {}
        self._hashes: dict[str, hashlib._Hash] = {}
        self._handles: dict[str, object] = {}

    def write(self, path: str, offset: int, data: bytes) -> None:
        """Append ``data`` at ``offset`` of ``path``. Raises InvalidArgument (unknown path, offset
        out of order, more bytes than declared)."""
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
        fh.write(data)  # type: ignore[attr-defined]
        self._hashes[path].update(data)
        self._written[path] = pos + len(data)

    def commit(self) -> ModelRecord:
        """Check every file (size and sha256) and register the model. Files never sent whose
        blob the cache already holds are taken from it. Raises InvalidArgument (incomplete or
        mismatching files; nothing is registered)."""
        hub, store = self.hub, self.hub.store
        for fh in self._handles.values():
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
                                          field_violations=[(f"header.files[{i}]", "no data received")])
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
            out = hub._commit(rec, self.staging)
        finally:
            lock.release()
        return out

    def abort(self) -> None:
        for fh in self._handles.values():
            with contextlib.suppress(Exception):
                fh.close()  # type: ignore[attr-defined]
        self._handles.clear()
        self.hub.store.remove_tree(self.staging)


# =============================================================================================
# helpers
# =============================================================================================
def _validate_lineage(lineage: Lineage, field: str) -> None:
    for key in ("base_model", "parent_model"):
        value = getattr(lineage, key)
        if value:
            if not value.startswith("models/"):
                raise InvalidArgument(f"{field}.{key} must be a model name 'models/{{model}}' (got {value!r})",
                                      field_violations=[(f"{field}.{key}", "expected models/{model}")])
            validate_model_id(value, f"{field}.{key}")
    if lineage.job and not lineage.job.startswith("jobs/"):
        raise InvalidArgument(f"{field}.job must be a job name 'jobs/{{job}}' (got {lineage.job!r})",
                              field_violations=[(f"{field}.job", "expected jobs/{job}")])


def _validate_labels(labels: dict[str, str], field: str) -> None:
    for k, v in labels.items():
        if not k or len(k) > 63 or len(v) > 256:
            raise InvalidArgument(f"label {k!r}: keys 1-63 characters, values at most 256",
                                  field_violations=[(f"{field}[{k}]", "key 1-63 chars, value <= 256 chars")])


def _sha256_file(path: Path, cancel: threading.Event | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            if cancel is not None and cancel.is_set():
                raise PullCancelled()
            h.update(chunk)
    return h.hexdigest()


def convert_gguf(gguf_path: Path, out_dir: Path, cancel: threading.Event | None) -> None:
    """Run the GGUF import (services/hub/gguf_import.py) in a child process so its memory is
    returned and it can be stopped. Raises InvalidArgument (not a loadable GGUF; the message
    carries the converter's error), PullCancelled."""
    cmd = [sys.executable, "-m", "swiftmesh.services.hub.gguf_import", str(gguf_path), str(out_dir)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        while True:
            try:
                _out, err = proc.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if cancel is not None and cancel.is_set():
                    proc.kill()
                    proc.wait()
                    raise PullCancelled() from None
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    if proc.returncode != 0:
        text = err.decode(errors="replace").strip()
        marker = "GGUF_IMPORT_ERROR:"
        msg = text.split(marker, 1)[1].strip() if marker in text else text[-2000:]
        if proc.returncode == 3:
            raise InvalidArgument(f"GGUF import of {gguf_path.name} failed: {msg}",
                                  field_violations=[("source", msg[:300])], reason="GGUF_IMPORT_FAILED")
        raise Internal(f"GGUF import of {gguf_path.name} crashed (exit {proc.returncode}): {msg}")
    if not (out_dir / "config.json").is_file():
        raise Internal(f"GGUF import of {gguf_path.name} produced no config.json")


__all__ = [
    "FileCheck",
    "Hub",
    "Progress",
    "PullJob",
    "PullRequest",
    "Stage",
    "Upload",
    "UploadHeader",
    "is_pickle",
]
