"""The model catalogue: look-up, listing, pins, deletion, and the commit that makes a new model
visible; with the checks of the record fields every writer shares (lineage, labels)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from filelock import Timeout

from swiftmesh.names import parse_resource_name, validate_model_id
from swiftmesh.runtime.durable import fsync_dir, fsync_tree
from swiftmesh.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from swiftmesh.runtime.paging import page

from .eviction import Eviction
from .store import Lineage, ModelFormat, ModelRecord, Store

log = logging.getLogger("swiftmesh.hub")


class Catalogue:
    """The committed models of one cache.

    Args:
        store: the cache.
        eviction: removal and quota of the same cache.
    """

    def __init__(self, store: Store, eviction: Eviction) -> None:
        self.store = store
        self.eviction = eviction

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
        for f in formats:
            if f not in ModelFormat.__members__.values() or f == 0:
                raise InvalidArgument(f"unknown format {f}", field_violations=[("formats", f"unknown value {f}")])
        base = f"models/{parse_resource_name(base_model, 'base_model')}" if base_model else ""
        parent = f"models/{parse_resource_name(parent_model, 'parent_model')}" if parent_model else ""
        pg = page(page_size, page_token, [sorted(formats), base, parent])
        models, more = self.store.list_models(list(formats), base, parent, pg.offset, pg.size)
        return models, pg.next_token(more)

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
            self.eviction.remove_model(model_id)
        finally:
            lock.release()

    def commit(self, rec: ModelRecord, staging: Path) -> ModelRecord:
        """Make the model visible: the complete ``staging`` directory becomes its snapshot (synced
        to disk: its files, its directories, the rename), then the rows, then old snapshots are
        removed (the caller holds the model lock). Returns the
        committed record. Raises ResourceExhausted (quota)."""
        self.eviction.make_room(0, rec.id, {e.sha256 for e in rec.files})
        with self.store.state_lock():
            for e in rec.files:
                if not self.store.has_blob(e.sha256):  # deleted by an eviction meanwhile: we hold the content
                    self.store.adopt_blob(staging / e.path, e.sha256)
            snap = self.store.new_snapshot_path(rec.id)
            fsync_tree(staging, parent=False)  # every name in it (the blobs' bytes are synced already)
            fresh = not snap.parent.exists()
            snap.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, snap)
            fsync_dir(snap.parent)
            if fresh:
                fsync_dir(snap.parent.parent)
                fsync_dir(snap.parent.parent.parent)
            rec.path = snap
            with self.store.transaction() as db:
                self.store.put_model(db, rec)
            for old in self.store.stale_snapshots(rec.id, keep=snap):
                self.store.remove_tree(old)
        log.info("committed models/%s (%d files, %d bytes) from %s", rec.id, len(rec.files), rec.size_bytes, rec.source)
        out = self.store.get_model(rec.id)
        assert out is not None
        return out


def validate_lineage(lineage: Lineage, field: str) -> None:
    """Check a lineage: base/parent ``models/{model}``, job ``jobs/{job}``. Raises InvalidArgument
    naming ``<field>.<key>``."""
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


def validate_labels(labels: dict[str, str], field: str) -> None:
    """Check labels: keys 1-63 characters, values at most 256. Raises InvalidArgument naming
    ``<field>[<key>]``."""
    for k, v in labels.items():
        if not k or len(k) > 63 or len(v) > 256:
            raise InvalidArgument(f"label {k!r}: keys 1-63 characters, values at most 256",
                                  field_violations=[(f"{field}[{k}]", "key 1-63 chars, value <= 256 chars")])
