"""What leaves the cache: a model's removal, eviction under ``hub.quota_bytes`` (orphan blobs
first, then least-recently-used unpinned models) and the start-up sweep of what interrupted
work left behind that nothing will resume."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path

from filelock import FileLock, Timeout

from swiftmesh.runtime.errors import ResourceExhausted

from .store import Store

log = logging.getLogger("swiftmesh.hub")

# Partial downloads untouched this long (seconds) are dropped by the sweep (hub.partial_max_age_s).
STALE_PART_S = 24 * 3600
# Upload, repair and conversion scratch older than this (seconds) is dropped by the sweep.
STALE_SCRATCH_S = 24 * 3600


class Eviction:
    """Removal and quota of one cache.

    Args:
        store: the cache.
        quota_bytes: the most bytes of blobs and partial downloads the cache may hold (0 or None:
            no quota).
        partial_max_age_s: partial downloads untouched this long are dropped by :meth:`housekeeping`.
    """

    def __init__(self, store: Store, quota_bytes: int | None, partial_max_age_s: float = STALE_PART_S) -> None:
        self.store = store
        self.quota_bytes = quota_bytes
        self.partial_max_age_s = partial_max_age_s

    def _usage(self) -> int:
        return self.store.blob_usage()[0] + self.store.partial_bytes()

    def remove_model(self, model_id: str) -> int:
        """Drop rows, directory and unshared blobs of a model (the caller holds its model lock).
        Returns the bytes of blobs freed."""
        with self.store.state_lock():
            sizes = self.store.blob_sizes()
            unref = self._remove_locked_state(model_id)
        freed = sum(sizes.get(s, 0) for s in unref)
        log.info("removed models/%s (%d bytes of blobs freed)", model_id, freed)
        return freed

    def _remove_locked_state(self, model_id: str) -> set[str]:
        """Like :meth:`remove_model`, for callers holding the state lock. Returns the sha256 of the
        blobs unlinked."""
        with self.store.transaction() as db:
            unref = self.store.delete_model_rows(db, model_id)
        self.store.unlink_blobs(unref)
        self.store.remove_tree(self.store.model_root(model_id))
        with contextlib.suppress(OSError):
            self.store.model_root(model_id).parent.rmdir()  # the org directory, when empty
        return unref

    def make_room(self, needed: int, keep_model: str, keep_shas: set[str]) -> None:
        """Ensure blobs + partial downloads + ``needed`` bytes fit the quota: drop orphan blobs,
        then LRU unpinned models (never ``keep_model`` nor models busy in another pull). Raises
        ResourceExhausted (reason QUOTA_EXCEEDED) without evicting anything when even that would
        not be enough."""
        quota = self.quota_bytes
        if not quota:
            return
        with self.store.state_lock():
            blob_bytes, orphans = self.store.blob_usage()
            usage = blob_bytes + self.store.partial_bytes()
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
                if self._usage() + needed <= quota:
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
                        self._remove_locked_state(m)
                finally:
                    lock.release()
            if self._usage() + needed > quota:
                raise ResourceExhausted(
                    f"models/{keep_model} needs {needed} more bytes and the {quota} byte quota is full "
                    "(models in use elsewhere could not be evicted)",
                    reason="QUOTA_EXCEEDED", retry_after=30,
                )

    def _drop_partial(self, part: Path) -> None:
        lock = self.store.fetch_lock(part.name.removesuffix(".part"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return  # a transfer is resuming it
        try:
            log.info("dropping partial download %s (untouched for over %.0f s)", part.name, self.partial_max_age_s)
            for p in (part, part.with_name(part.name + ".json")):
                with contextlib.suppress(OSError):
                    p.unlink()
        finally:
            lock.release()

    def housekeeping(self) -> None:
        """Remove what interrupted work left that nothing will resume: staging directories of
        pulls no process runs (their model lock is free), snapshot directories no model row
        references, upload/repair/conversion scratch older than a day, and partial downloads
        untouched for ``partial_max_age_s`` that no transfer holds (their fetch lock is free)."""
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
                  and now - d.stat().st_mtime > STALE_SCRATCH_S):
                store.remove_tree(d)
        for d in list(store.tmp_dir.iterdir()):
            with contextlib.suppress(OSError):
                age = now - d.stat().st_mtime
                if d.is_dir() and age > STALE_SCRATCH_S:
                    shutil.rmtree(d, ignore_errors=True)
                elif d.name.endswith(".part") and age > self.partial_max_age_s:
                    self._drop_partial(d)
                elif d.name.endswith(".part.json") and not d.with_suffix("").exists():
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
