"""The hub's cache on disk: content-addressed blobs, model snapshots and their state.

Layout under the cache directory (``settings.hub_cache_dir``)::

    hub.db                         SQLite (WAL): models, files, pins, fetch records, cache id
    blobs/sha256/ab/<sha256>       every verified file, once, by content (read-only)
    models/<org|_>/<name>/<snap>/  a model's directory: hard links to its blobs
    tmp/<key>.part (+ .json)       partial downloads, kept across crashes for resume (counted
                                   against the quota; removed after hub.partial_max_age_s)
    staging/<id>/                  a pull or upload being assembled (links to blobs)
    locks/*.lock                   file locks (filelock) shared by every hub process

Several hub processes may share one cache directory: state changes are SQLite transactions
(``BEGIN IMMEDIATE``, 60 s busy timeout), a model's pull/verify/delete hold its model lock,
and blob garbage collection, eviction and commits hold the state lock. Lock order: model lock,
then state lock; the state lock holder only *tries* other model locks.

A model's snapshot directory holds hard links to the blobs (a copy when the filesystem refuses
links), so it is a self-contained Hugging Face directory for same-host readers. A blob whose
link count is 1 is referenced by nothing (orphan) and is the first thing eviction removes.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from swiftmesh.names import dir_parts
from swiftmesh.runtime import sqlite
from swiftmesh.runtime.durable import fsync_dir, fsync_file

# How long a statement waits for another process's write lock, seconds.
BUSY_TIMEOUT_S = 60.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY,
    format INTEGER NOT NULL,
    source TEXT NOT NULL,
    revision TEXT NOT NULL DEFAULT '',
    size_bytes INTEGER NOT NULL,
    base_model TEXT NOT NULL DEFAULT '',
    parent_model TEXT NOT NULL DEFAULT '',
    job TEXT NOT NULL DEFAULT '',
    labels TEXT NOT NULL DEFAULT '{}',
    request TEXT NOT NULL DEFAULT '{}',
    path TEXT NOT NULL,
    create_time REAL NOT NULL,
    last_used_time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    model TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    origin TEXT,
    PRIMARY KEY (model, path)
);
CREATE INDEX IF NOT EXISTS files_sha ON files (sha256);
CREATE TABLE IF NOT EXISTS pins (
    model TEXT NOT NULL,
    holder TEXT NOT NULL,
    create_time REAL NOT NULL,
    PRIMARY KEY (model, holder)
);
CREATE TABLE IF NOT EXISTS fetched (
    key TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class ModelFormat(enum.IntEnum):
    """Mirror of ``hub.v1.ModelFormat`` (same values) so domain code needs no protobuf."""

    UNSPECIFIED = 0
    FULL = 1
    PEFT_ADAPTER = 2
    GGUF_DERIVED = 3
    DATASET = 4


@dataclass
class Lineage:
    """Where a model comes from: ``models/{base}``, ``models/{parent}``, ``jobs/{job}`` (empty: none)."""
    base_model: str = ""
    parent_model: str = ""
    job: str = ""


@dataclass
class FileEntry:
    """One file of a model: relative path, size in bytes, sha256 (hex), and how to fetch it again
    (``origin``, a JSON-able dict used by VerifyModel repair; None when it cannot be re-fetched)."""

    path: str
    size: int
    sha256: str
    origin: dict | None = None


@dataclass
class ModelRecord:
    """A committed (complete, verified) model."""

    id: str
    format: ModelFormat
    source: str
    revision: str
    files: list[FileEntry]
    path: Path
    lineage: Lineage = field(default_factory=Lineage)
    labels: dict[str, str] = field(default_factory=dict)
    request: dict = field(default_factory=dict)
    create_time: float = 0.0
    last_used_time: float = 0.0
    pins: list[str] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        """Bytes of all files."""
        return sum(f.size for f in self.files)

    @property
    def name(self) -> str:
        """The resource name ``models/{id}``."""
        return f"models/{self.id}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class Store:
    """State and files of one cache directory (see the module docstring). Thread- and process-safe."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.models_dir = self.root / "models"
        self.tmp_dir = self.root / "tmp"
        self.staging_dir = self.root / "staging"
        self.locks_dir = self.root / "locks"
        for d in (self.blobs_dir, self.models_dir, self.tmp_dir, self.staging_dir, self.locks_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "hub.db"
        with FileLock(str(self.locks_dir / "init.lock")), self.connect() as db:
            db.executescript(SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key='cache_id'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('cache_id', ?)", (uuid.uuid4().hex[:16],))
                row = db.execute("SELECT value FROM meta WHERE key='cache_id'").fetchone()
        self.cache_id: str = row[0]

    # -- database ------------------------------------------------------------------------
    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection from the shared opener (autocommit, WAL, 60 s busy timeout), closed after
        the block (use :meth:`transaction` for writes)."""
        db = sqlite.connect(self.db_path, busy_timeout_s=BUSY_TIMEOUT_S)
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE), committed on success, rolled back on error."""
        with self.connect() as db, sqlite.transaction(db):
            yield db

    # -- locks ---------------------------------------------------------------------------
    def model_lock(self, model_id: str) -> FileLock:
        """The lock of one model (pull, verify/repair, delete, upload commit hold it)."""
        return FileLock(str(self.locks_dir / f"model-{_digest(model_id)}.lock"), thread_local=False)

    def state_lock(self) -> FileLock:
        """The cache-wide lock of commits, deletions, eviction and blob garbage collection."""
        return FileLock(str(self.locks_dir / "state.lock"), thread_local=False)

    def fetch_lock(self, key: str) -> FileLock:
        """The lock of one partial download ``tmp/<key>.part``."""
        return FileLock(str(self.locks_dir / f"fetch-{key}.lock"), thread_local=False)

    # -- paths ---------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        """Where the blob of ``sha256`` lives (``blobs/sha256/ab/<sha256>``)."""
        return self.blobs_dir / sha256[:2] / sha256

    def model_root(self, model_id: str) -> Path:
        """The directory of a model's snapshots (``models/<org|_>/<name>``)."""
        org, name = dir_parts(model_id)
        return self.models_dir / org / name

    def new_snapshot_path(self, model_id: str) -> Path:
        """A fresh snapshot directory path (not created)."""
        return self.model_root(model_id) / uuid.uuid4().hex[:12]

    def staging_path(self, model_id: str) -> Path:
        """Where a pull of ``model_id`` assembles its files."""
        return self.staging_dir / f"pull-{_digest(model_id)}"

    def progress_path(self, model_id: str) -> Path:
        """Where the process pulling ``model_id`` publishes its progress for followers."""
        return self.staging_dir / f"pull-{_digest(model_id)}.progress.json"

    def part_path(self, key: str) -> Path:
        """The partial download of transfer ``key`` (``tmp/<key>.part``)."""
        return self.tmp_dir / f"{key}.part"

    # -- blobs ---------------------------------------------------------------------------
    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        """True when the blob exists (with ``size`` bytes, when given)."""
        try:
            st = self.blob_path(sha256).stat()
        except OSError:
            return False
        return size is None or st.st_size == size

    def adopt_blob(self, src: Path, sha256: str) -> Path:
        """Make ``src`` (a verified file, staying where it is) the blob ``sha256`` unless that blob
        exists already, in which case ``src`` is replaced by a link to the existing blob (one copy
        on disk). Returns the blob path. Files become read-only."""
        blob = self.blob_path(sha256)
        if not blob.parent.is_dir():
            blob.parent.mkdir(parents=True, exist_ok=True)
            fsync_dir(blob.parent.parent)
        _make_readonly(src)
        try:
            os.link(src, blob)
            fsync_dir(blob.parent)  # the blob's name is on disk (its bytes were synced by the writer)
            return blob
        except FileExistsError:
            pass
        except OSError:  # no hard links here: copy
            tmp = blob.with_name(f".{blob.name}.{uuid.uuid4().hex[:8]}")
            shutil.copyfile(src, tmp)
            _make_readonly(tmp)
            fsync_file(tmp)
            os.replace(tmp, blob)
            fsync_dir(blob.parent)
            return blob
        if os.path.samefile(src, blob):
            return blob
        self.link_into(sha256, src)
        return blob

    def link_into(self, sha256: str, dest: Path) -> None:
        """Put the blob at ``dest`` (hard link, or copy where links fail), replacing what is there.
        Raises FileNotFoundError when the blob does not exist."""
        blob = self.blob_path(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.link")
        try:
            os.link(blob, tmp)
        except FileNotFoundError:
            raise
        except OSError:
            shutil.copyfile(blob, tmp)
            _make_readonly(tmp)
        os.replace(tmp, dest)

    def partial_bytes(self) -> int:
        """Bytes of the partial downloads in ``tmp/`` (they count against the quota while they grow)."""
        total = 0
        for p in self.tmp_dir.glob("*.part"):
            with contextlib.suppress(OSError):
                total += p.stat().st_size
        return total

    def partial_size(self, key: str) -> int:
        """Bytes already in the partial download of transfer ``key`` (0: none)."""
        try:
            return self.part_path(key).stat().st_size
        except OSError:
            return 0

    def blob_usage(self) -> tuple[int, list[tuple[Path, int]]]:
        """(bytes of all blobs, [(path, size) of orphan blobs: referenced by no directory])."""
        total = 0
        orphans: list[tuple[Path, int]] = []
        for sub in self.blobs_dir.iterdir() if self.blobs_dir.exists() else ():
            if not sub.is_dir():
                continue
            for b in sub.iterdir():
                if b.name.startswith("."):
                    continue
                try:
                    st = b.stat()
                except OSError:
                    continue
                total += st.st_size
                if st.st_nlink <= 1:
                    orphans.append((b, st.st_size))
        return total, orphans

    # -- models --------------------------------------------------------------------------
    def _record(self, db: sqlite3.Connection, row: tuple) -> ModelRecord:
        (mid, fmt, source, revision, _size, base, parent, job, labels, request, path, ctime, utime) = row
        files = [
            FileEntry(p, s, h, json.loads(o) if o else None)
            for p, s, h, o in db.execute(
                "SELECT path, size, sha256, origin FROM files WHERE model=? ORDER BY path", (mid,)
            )
        ]
        pins = [h for (h,) in db.execute("SELECT holder FROM pins WHERE model=? ORDER BY holder", (mid,))]
        return ModelRecord(
            id=mid,
            format=ModelFormat(fmt),
            source=source,
            revision=revision,
            files=files,
            path=Path(path),
            lineage=Lineage(base, parent, job),
            labels=json.loads(labels),
            request=json.loads(request),
            create_time=ctime,
            last_used_time=utime,
            pins=pins,
        )

    _COLUMNS = ("id, format, source, revision, size_bytes, base_model, parent_model, job, labels, request, "
                "path, create_time, last_used_time")

    def get_model(self, model_id: str) -> ModelRecord | None:
        """The committed model, or None."""
        with self.connect() as db:
            row = db.execute(f"SELECT {self._COLUMNS} FROM models WHERE id=?", (model_id,)).fetchone()
            return self._record(db, row) if row else None

    def list_models(
        self, formats: list[int], base_model: str, parent_model: str, offset: int, limit: int
    ) -> tuple[list[ModelRecord], bool]:
        """Models newest first (create_time, then id), filtered; returns (page, more_after)."""
        where, args = [], []
        if formats:
            where.append(f"format IN ({','.join('?' * len(formats))})")
            args += list(formats)
        if base_model:
            where.append("base_model=?")
            args.append(base_model)
        if parent_model:
            where.append("parent_model=?")
            args.append(parent_model)
        sql = f"SELECT {self._COLUMNS} FROM models"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY create_time DESC, id LIMIT ? OFFSET ?"
        with self.connect() as db:
            rows = db.execute(sql, (*args, limit + 1, offset)).fetchall()
            return [self._record(db, r) for r in rows[:limit]], len(rows) > limit

    def put_model(self, db: sqlite3.Connection, rec: ModelRecord) -> None:
        """Insert or replace a model and its files (inside a transaction); pins are kept."""
        db.execute("DELETE FROM files WHERE model=?", (rec.id,))
        db.execute(
            f"INSERT OR REPLACE INTO models ({self._COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                rec.id, int(rec.format), rec.source, rec.revision, rec.size_bytes, rec.lineage.base_model,
                rec.lineage.parent_model, rec.lineage.job, json.dumps(rec.labels, sort_keys=True),
                json.dumps(rec.request, sort_keys=True), str(rec.path), rec.create_time, rec.last_used_time,
            ),
        )
        db.executemany(
            "INSERT INTO files (model, path, size, sha256, origin) VALUES (?,?,?,?,?)",
            [(rec.id, f.path, f.size, f.sha256, json.dumps(f.origin) if f.origin else None) for f in rec.files],
        )

    def delete_model_rows(self, db: sqlite3.Connection, model_id: str) -> set[str]:
        """Delete a model's rows (inside a transaction). Returns the sha256 of its blobs that no
        other model references any more."""
        shas = {h for (h,) in db.execute("SELECT sha256 FROM files WHERE model=?", (model_id,))}
        db.execute("DELETE FROM files WHERE model=?", (model_id,))
        db.execute("DELETE FROM pins WHERE model=?", (model_id,))
        db.execute("DELETE FROM models WHERE id=?", (model_id,))
        still = {h for (h,) in db.execute(
            f"SELECT DISTINCT sha256 FROM files WHERE sha256 IN ({','.join('?' * len(shas))})", tuple(shas)
        )} if shas else set()
        return shas - still

    def models_using(self, sha256: str) -> list[tuple[str, str, str]]:
        """[(model id, snapshot path, file path)] of every committed file with this content."""
        with self.connect() as db:
            return db.execute(
                "SELECT f.model, m.path, f.path FROM files f JOIN models m ON m.id=f.model WHERE f.sha256=?",
                (sha256,),
            ).fetchall()

    def touch(self, model_id: str, when: float | None = None) -> None:
        """Set a model's last-used time (default now; eviction is least recently used first)."""
        with self.transaction() as db:
            db.execute("UPDATE models SET last_used_time=? WHERE id=?", (when or time.time(), model_id))

    def add_pin(self, db: sqlite3.Connection, model_id: str, holder: str) -> None:
        """Pin ``model_id`` for ``holder`` (idempotent; inside a transaction)."""
        db.execute("INSERT OR IGNORE INTO pins VALUES (?,?,?)", (model_id, holder, time.time()))

    def remove_pin(self, model_id: str, holder: str) -> None:
        """Remove ``holder``'s pin (no-op when it holds none)."""
        with self.transaction() as db:
            db.execute("DELETE FROM pins WHERE model=? AND holder=?", (model_id, holder))

    def eviction_candidates(self, exclude: set[str]) -> list[tuple[str, float]]:
        """Unpinned models, least recently used first: [(id, last_used_time)]."""
        with self.connect() as db:
            rows = db.execute(
                "SELECT id, last_used_time FROM models WHERE id NOT IN (SELECT model FROM pins) "
                "ORDER BY last_used_time, create_time"
            ).fetchall()
        return [(m, t) for m, t in rows if m not in exclude]

    def blob_refs(self) -> dict[str, set[str]]:
        """sha256 -> ids of the models using it."""
        out: dict[str, set[str]] = {}
        with self.connect() as db:
            for model, sha in db.execute("SELECT model, sha256 FROM files"):
                out.setdefault(sha, set()).add(model)
        return out

    def blob_sizes(self) -> dict[str, int]:
        """sha256 -> size in bytes, of every committed file's blob."""
        with self.connect() as db:
            return dict(db.execute("SELECT sha256, MAX(size) FROM files GROUP BY sha256").fetchall())

    # -- fetch records (what a source file hashed to, for resume without a known hash) ----
    def fetched(self, key: str) -> tuple[str, int] | None:
        """(sha256, size) a transfer without a known hash produced before, or None."""
        with self.connect() as db:
            row = db.execute("SELECT sha256, size FROM fetched WHERE key=?", (key,)).fetchone()
        return (row[0], row[1]) if row else None

    def record_fetched(self, key: str, sha256: str, size: int) -> None:
        """Remember what transfer ``key`` produced (for resume without a known hash)."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO fetched VALUES (?,?,?,?)", (key, sha256, size, time.time()))

    # -- housekeeping ----------------------------------------------------------------------
    def remove_tree(self, path: Path) -> None:
        """Remove a directory tree (renamed aside first so a crash never leaves half of it in place)."""
        if not path.exists():
            return
        trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(path, trash)
        except OSError:
            trash = path
        shutil.rmtree(trash, onerror=_force_remove)

    def unlink_blobs(self, shas: set[str]) -> None:
        """Remove these blobs (missing ones are skipped)."""
        for sha in shas:
            with contextlib.suppress(FileNotFoundError):
                self.blob_path(sha).unlink()

    def stale_snapshots(self, model_id: str, keep: Path | None) -> list[Path]:
        """The model's snapshot directories other than ``keep``."""
        root = self.model_root(model_id)
        if not root.is_dir():
            return []
        return [p for p in root.iterdir() if p.is_dir() and len(p.name) == 12 and (keep is None or p != keep)]


def _make_readonly(path: Path) -> None:
    try:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    except OSError:
        pass


def _force_remove(func, path, exc) -> None:
    with contextlib.suppress(OSError):
        os.chmod(os.path.dirname(path), 0o755)
        func(path)
