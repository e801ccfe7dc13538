"""SQLite job store: job records and their numbered event history, surviving restarts.

One database file per service (``<state_dir>/jobs.db``), opened by the shared
:func:`swiftmesh.runtime.sqlite.connect` (WAL, busy timeout, synchronous=FULL), safe to use
from any thread (one connection per thread, writes serialised by a lock). A job is stored as
the JSON of its :class:`~swiftmesh.jobkit.types.Job` record (its spec the JSON of the kind's
domain spec) next to the indexed columns used for listing; events as JSON
:class:`~swiftmesh.jobkit.types.JobEvent` records numbered from 1 per job. A change of a job and
the event that reports it are written in one transaction (:meth:`JobStore.update`).

The tables are ``job_records`` and ``job_events``; the ``jobs`` / ``events`` tables of older
versions (serialized protos) are left as they are and not read.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from swiftmesh.jobkit.types import Job, JobEvent, now
from swiftmesh.runtime.errors import AlreadyExists, NotFound
from swiftmesh.runtime.sqlite import connect, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS job_records (
    name TEXT PRIMARY KEY,
    uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    state INTEGER NOT NULL,
    create_time REAL NOT NULL,
    record TEXT NOT NULL,
    -- the kind's plan (JSON), written once the job is validated
    plan TEXT
);
CREATE INDEX IF NOT EXISTS job_records_by_time ON job_records(create_time DESC);
CREATE TABLE IF NOT EXISTS job_events (
    job TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time REAL NOT NULL,
    record TEXT NOT NULL,
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
        self._local = threading.local()
        self._lock = threading.RLock()
        with self._lock:
            self._conn().executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
        return conn

    # Jobs ------------------------------------------------------------------------------
    def insert(self, job: Job, plan: str | None = None, event: JobEvent | None = None) -> JobEvent | None:
        """Store a new job (and its plan JSON, and the event announcing it, in one transaction).

        Returns the stored event (numbered), if any. AlreadyExists when the name is taken.
        """
        with self._lock, transaction(self._conn()) as conn:
            try:
                conn.execute(
                    "INSERT INTO job_records(name, uid, kind, state, create_time, record, plan) VALUES (?,?,?,?,?,?,?)",
                    (job.name, job.uid, job.kind, int(job.state), job.create_time or now(), _dump(job), plan),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"job {job.name} already exists", reason="JOB_EXISTS") from None
            return self._append(conn, event) if event is not None else None

    def get(self, name: str) -> Job:
        """The job record; NotFound (reason JOB_NOT_FOUND) when there is none."""
        row = self._conn().execute("SELECT record FROM job_records WHERE name=?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"job {name} does not exist", reason="JOB_NOT_FOUND", metadata={"job": name})
        return Job.from_json(json.loads(row[0]))

    def plan(self, name: str) -> str | None:
        """The plan JSON stored with the job (None before it was validated)."""
        row = self._conn().execute("SELECT plan FROM job_records WHERE name=?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"job {name} does not exist", reason="JOB_NOT_FOUND")
        return row[0]

    def update(self, name: str, mutate: Callable[[Job], None], event: JobEvent | Callable[[Job], JobEvent | None]
               | None = None) -> tuple[Job, JobEvent | None]:
        """Read-modify-write of one job, and the event that reports the change, in one transaction.

        ``mutate`` changes the record in place (it may raise to abort, e.g. FailedPrecondition
        for a refused transition). ``event`` is the event to append, or a function of the
        changed job that returns it (or None). Returns the new record and the stored event.
        """
        with self._lock, transaction(self._conn()) as conn:
            job = self.get(name)
            mutate(job)
            job.update_time = now()
            ev = event(job) if callable(event) else event
            conn.execute("UPDATE job_records SET state=?, record=? WHERE name=?", (int(job.state), _dump(job), name))
            return job, (self._append(conn, ev) if ev is not None else None)

    def list(
        self,
        *,
        states: Iterable[int] = (),
        kinds: Iterable[str] = (),
        offset: int = 0,
        limit: int = 50,
    ) -> list[Job]:
        """Jobs newest first, filtered by state and kind; ``limit`` rows from ``offset``."""
        sql = "SELECT record FROM job_records"
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
        return [Job.from_json(json.loads(r[0])) for r in self._conn().execute(sql, params).fetchall()]

    def delete(self, name: str) -> None:
        """Remove the job and its events (nothing when it does not exist)."""
        with self._lock, transaction(self._conn()) as conn:
            conn.execute("DELETE FROM job_records WHERE name=?", (name,))
            conn.execute("DELETE FROM job_events WHERE job=?", (name,))

    # Events ----------------------------------------------------------------------------
    def append_event(self, event: JobEvent) -> JobEvent:
        """Number the event (next sequence of its job), timestamp it if unset, store it."""
        with self._lock, transaction(self._conn()) as conn:
            return self._append(conn, event)

    def _append(self, conn: sqlite3.Connection, event: JobEvent) -> JobEvent:
        row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM job_events WHERE job=?", (event.job,)).fetchone()
        event.sequence = row[0] + 1
        if not event.time:
            event.time = now()
        conn.execute("INSERT INTO job_events(job, seq, time, record) VALUES (?,?,?,?)",
                     (event.job, event.sequence, event.time, _dump(event)))
        return event

    def events(self, job: str, start_sequence: int = 1, limit: int = 10_000) -> list[JobEvent]:
        """Up to ``limit`` events of ``job`` from ``start_sequence`` (>= 1), in order."""
        rows = self._conn().execute(
            "SELECT record FROM job_events WHERE job=? AND seq>=? ORDER BY seq LIMIT ?",
            (job, max(1, start_sequence), limit),
        ).fetchall()
        return [JobEvent.from_json(json.loads(r[0])) for r in rows]

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _dump(record) -> str:
    return json.dumps(record.to_json(), separators=(",", ":"))
