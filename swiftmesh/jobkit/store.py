"""SQLite job store: job records and their numbered event history, surviving restarts.

One database file per service (``<state_dir>/jobs.db``), WAL mode, safe to use from any
thread (one connection per thread, writes serialised by a lock). Jobs are stored as the
serialized ``swiftmesh.jobs.v1.Job`` proto next to the indexed columns used for listing;
events as serialized ``JobEvent`` protos numbered from 1 per job.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from swiftmesh.jobs.v1 import jobs_pb2
from swiftmesh.runtime.errors import AlreadyExists, NotFound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY,
    uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    state INTEGER NOT NULL,
    create_time REAL NOT NULL,
    proto BLOB NOT NULL,
    -- the kind's plan (JSON), written once the job is validated
    plan TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs(create_time DESC);
CREATE TABLE IF NOT EXISTS events (
    job TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time REAL NOT NULL,
    proto BLOB NOT NULL,
    PRIMARY KEY (job, seq)
);
"""


class JobStore:
    """Job records and events in one SQLite file.

    Args:
        path: the database file (created with its parent directory).

    Raises :class:`NotFound` for unknown jobs and :class:`AlreadyExists` for a taken name.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.RLock()
        with self._lock:
            conn = self._conn()
            conn.executescript(_SCHEMA)
            conn.commit()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    # Jobs ------------------------------------------------------------------------------
    def insert(self, job: jobs_pb2.Job, plan: str | None = None) -> None:
        with self._lock:
            try:
                self._conn().execute(
                    "INSERT INTO jobs(name, uid, kind, state, create_time, proto, plan) VALUES (?,?,?,?,?,?,?)",
                    (job.name, job.uid, job.kind, int(job.state), _ts(job.create_time), job.SerializeToString(), plan),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"job {job.name} already exists", reason="JOB_EXISTS") from None

    def get(self, name: str) -> jobs_pb2.Job:
        row = self._conn().execute("SELECT proto FROM jobs WHERE name=?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"job {name} does not exist", reason="JOB_NOT_FOUND", metadata={"job": name})
        return jobs_pb2.Job.FromString(row[0])

    def plan(self, name: str) -> str | None:
        row = self._conn().execute("SELECT plan FROM jobs WHERE name=?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"job {name} does not exist", reason="JOB_NOT_FOUND")
        return row[0]

    def update(self, name: str, mutate: Callable[[jobs_pb2.Job], None]) -> jobs_pb2.Job:
        """Read-modify-write of one job under the store lock; returns the new record."""
        with self._lock:
            job = self.get(name)
            mutate(job)
            job.update_time.GetCurrentTime()
            self._conn().execute(
                "UPDATE jobs SET state=?, proto=? WHERE name=?", (int(job.state), job.SerializeToString(), name)
            )
            return job

    def list(
        self,
        *,
        states: Iterable[int] = (),
        kinds: Iterable[str] = (),
        offset: int = 0,
        limit: int = 50,
    ) -> list[jobs_pb2.Job]:
        """Jobs newest first, filtered by state and kind."""
        sql = "SELECT proto FROM jobs"
        where, params = [], []
        states, kinds = list(states), list(kinds)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            params += [int(s) for s in states]
        if kinds:
            where.append(f"kind IN ({','.join('?' * len(kinds))})")
            params += kinds
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY create_time DESC, name LIMIT ? OFFSET ?"
        params += [limit, offset]
        return [jobs_pb2.Job.FromString(r[0]) for r in self._conn().execute(sql, params).fetchall()]

    def delete(self, name: str) -> None:
        with self._lock:
            conn = self._conn()
            conn.execute("BEGIN")
            conn.execute("DELETE FROM jobs WHERE name=?", (name,))
            conn.execute("DELETE FROM events WHERE job=?", (name,))
            conn.execute("COMMIT")

    # Events ----------------------------------------------------------------------------
    def append_event(self, event: jobs_pb2.JobEvent) -> jobs_pb2.JobEvent:
        """Number the event (next sequence of its job), timestamp it if unset, store it."""
        with self._lock:
            conn = self._conn()
            row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE job=?", (event.job,)).fetchone()
            event.sequence = row[0] + 1
            if not event.HasField("time"):
                event.time.GetCurrentTime()
            conn.execute(
                "INSERT INTO events(job, seq, time, proto) VALUES (?,?,?,?)",
                (event.job, event.sequence, _ts(event.time), event.SerializeToString()),
            )
            return event

    def events(self, job: str, start_sequence: int = 1, limit: int = 10_000) -> list[jobs_pb2.JobEvent]:
        rows = self._conn().execute(
            "SELECT proto FROM events WHERE job=? AND seq>=? ORDER BY seq LIMIT ?",
            (job, max(1, start_sequence), limit),
        ).fetchall()
        return [jobs_pb2.JobEvent.FromString(r[0]) for r in rows]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _ts(ts) -> float:
    return ts.seconds + ts.nanos / 1e9 if (ts.seconds or ts.nanos) else time.time()
