"""Pulls: a source resolved into a plan, its files brought into the cache (resuming, verified,
up to ``hub.download_concurrency`` at once), GGUF files converted, the model committed.

Concurrent pulls of one model do one transfer: in one process they share a
:class:`~.progress.PullJob`; across processes the model's file lock lets one pull run while the
others follow its published progress and then find the committed model.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from filelock import Timeout
from prometheus_client import Counter

from swiftmesh.names import validate_model_id
from swiftmesh.runtime.durable import fsync_file
from swiftmesh.runtime.errors import (
    AlreadyExists,
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SwiftMeshError,
)

from . import gguf_import
from .catalogue import Catalogue, validate_labels, validate_lineage
from .download import Fetcher, FetchResult, PullCancelled, check_free_space, disk_full, is_disk_full
from .eviction import Eviction
from .progress import Progress, PullJob, Stage, Tracker, done_job, progress_from_file
from .sources import default_model_id, resolve
from .sources.base import Plan, PlannedFile, SourceContext
from .store import FileEntry, Lineage, ModelFormat, ModelRecord, Store
from .verify import sha256_file

log = logging.getLogger("swiftmesh.hub")

BYTES_FETCHED = Counter("swiftmesh_hub_bytes_fetched_total", "Bytes the hub transferred from sources.", ["kind"])
PULLS = Counter("swiftmesh_hub_pulls_total", "Pulls by result.", ["result"])
# A download whose size the source did not announce is checked against hub.quota_bytes every this
# many bytes while it grows (bytes).
QUOTA_CHECK_BYTES = 4 << 20


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
    # The caller is not on this machine (its gRPC peer is not loopback): local and pkg:// sources
    # only under hub.local_source_roots (none when unset).
    remote_caller: bool = False


class Puller:
    """The pulls of one hub process.

    Args:
        store, catalogue, eviction: the cache, its models and its quota.
        fetcher: moves single files (shared with verify's repair).
        ctx: what source resolvers need (endpoints, tokens, local roots).
        concurrency: files transferred at once per pull.
    """

    def __init__(self, store: Store, catalogue: Catalogue, eviction: Eviction, fetcher: Fetcher,
                 ctx: SourceContext, concurrency: int) -> None:
        self.store = store
        self.catalogue = catalogue
        self.eviction = eviction
        self.fetcher = fetcher
        self.ctx = ctx
        self.concurrency = concurrency
        self.jobs: dict[str, PullJob] = {}
        self._jobs_lock = threading.Lock()
        self._closing = threading.Event()

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new pulls, cancel those in flight (their partial files stay) and wait up to
        ``timeout`` s for them."""
        self._closing.set()
        with self._jobs_lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            job.cancel.set()
        concurrent.futures.wait([j.future for j in jobs], timeout=timeout)

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
        validate_lineage(req.lineage, "lineage")
        validate_labels(req.labels, "labels")
        if req.format not in ModelFormat.__members__.values():
            raise InvalidArgument(f"unknown format {req.format}", field_violations=[("format", "unknown value")])
        req.model_id = model_id
        if not req.force:
            rec = self.store.get_model(model_id)
            if rec is not None:
                self._check_same_source(rec, req)
                return done_job(model_id, rec), False
        with self._jobs_lock:
            job = self.jobs.get(model_id)
            if job is not None and not job.future.done() and not job.cancel.is_set():
                return job, True
            job = PullJob(model_id)
            self.jobs[model_id] = job
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

    @staticmethod
    def _check_same_source(rec: ModelRecord, req: PullRequest) -> None:
        if rec.source != req.source:
            raise AlreadyExists(
                f"models/{rec.id} exists, pulled from {rec.source}; pull {req.source} with force to replace it, "
                "or choose another model_id",
                reason="MODEL_EXISTS",
                field_violations=[("model_id", f"already holds {rec.source}")],
            )

    def _run_pull(self, job: PullJob, req: PullRequest) -> None:
        try:
            try:
                rec = self._pull(job, req)
            except (OSError, sqlite3.OperationalError) as e:
                if not is_disk_full(e):
                    raise
                raise disk_full(self.store.root) from e
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
                if self.jobs.get(job.model_id) is job:
                    del self.jobs[job.model_id]

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
                    p = progress_from_file(self.store.progress_path(model_id))
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
            ctx = self.ctx
            if req.remote_caller and ctx.local_roots is None:
                ctx = dataclasses.replace(ctx, local_roots=[])
            plan = resolve(
                req.source, ctx, revision=req.revision, allow_patterns=req.allow_patterns,
                ignore_patterns=req.ignore_patterns, allow_pickle=req.allow_pickle, requested_format=req.format,
            )
            transfer = plan.files if plan.gguf is None else [plan.gguf]
            tracker = Tracker(job, progress_file, transfer)
            # partial files already on disk count in the cache's usage: only the rest is needed
            needed = sum(max((f.size or 0) - self.store.partial_size(f.key), 0)
                         for f in transfer if not (f.sha256 and self.store.has_blob(f.sha256)))
            self.eviction.make_room(needed, model_id, {f.sha256 for f in transfer if f.sha256})
            check_free_space(self.store.tmp_dir, needed)
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
            out = self.catalogue.commit(rec, staging)
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
            part, result = self._fetch(job, tracker, pf)
            self.store.adopt_blob(part, result.sha256)
            if not pf.sha256:
                self.store.record_fetched(pf.key, result.sha256, result.size)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, dest)
            tracker.file_done(pf.path, result.size, pf.size, counted=True)
            return FileEntry(pf.path, result.size, result.sha256, pf.origin)
        finally:
            lock.release()

    def _fetch(self, job: PullJob, tracker: Tracker, pf: PlannedFile) -> tuple[Path, FetchResult]:
        """Transfer ``pf`` into its partial file, resuming (the caller holds its fetch lock)."""
        tracker.start_file(pf.path)
        part = self.store.part_path(pf.key)
        on_bytes = tracker.add if pf.size is not None else self._quota_checked(tracker.add, job.model_id)
        result = self.fetcher.fetch(
            pf.origin, part, size=pf.size, sha256=pf.sha256, git_sha1=pf.git_sha1,
            on_bytes=on_bytes, on_resume=tracker.resumed, cancel=job.cancel,
        )
        BYTES_FETCHED.labels(pf.origin.get("kind", "?")).inc(result.transferred)
        return part, result

    def _quota_checked(self, add: Callable[[int], None], model_id: str) -> Callable[[int], None]:
        """``add`` that also checks the quota every :data:`QUOTA_CHECK_BYTES` received, for a file
        whose size the source did not announce (its partial file counts in the cache's usage):
        over the quota, after eviction, ResourceExhausted (the fetcher then removes the partial)."""
        since = 0

        def on_bytes(n: int) -> None:
            nonlocal since
            add(n)
            since += n
            if since >= QUOTA_CHECK_BYTES:
                since = 0
                self.eviction.make_room(0, model_id, set())

        return on_bytes

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
                    part, result = self._fetch(job, tracker, pf)
                    work.mkdir(parents=True)
                    gguf_path = work / Path(pf.path).name
                    os.replace(part, gguf_path)
                    gguf_sha = result.sha256
                    tracker.file_done(pf.path, result.size, pf.size)
                finally:
                    lock.release()
            tracker.stage(Stage.CONVERTING, pf.path)
            self.eviction.make_room(3 * gguf_path.stat().st_size, job.model_id, set())
            out = staging
            self.store.remove_tree(out)
            gguf_import.convert_gguf(gguf_path, out, job.cancel)
            tracker.stage(Stage.VERIFYING)
            entries = []
            for p in sorted(out.rglob("*")):
                if not p.is_file():
                    continue
                rel = p.relative_to(out).as_posix()
                sha = sha256_file(p, job.cancel)
                fsync_file(p)
                self.store.adopt_blob(p, sha)
                entries.append(FileEntry(rel, p.stat().st_size, sha,
                                         {"kind": "gguf", "gguf": pf.origin, "gguf_sha256": gguf_sha or pf.sha256,
                                          "gguf_file": Path(pf.path).name}))
            plan.revision = plan.revision or (gguf_sha or "")[:12]
            return entries
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
