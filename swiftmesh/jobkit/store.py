"""The job store: job records and their numbered event history, surviving restarts.

On the shared database layer (:mod:`swiftmesh.runtime.database`: SQLAlchemy, schema kept current
by the Alembic revisions ``01xx_jobs_*`` of :mod:`swiftmesh.migrations` on open). Default: one
SQLite file per service, ``sqlite:///<state_dir>/jobs.db`` (WAL, busy timeout,
``synchronous=FULL``); ``trainer.database_url`` / ``aligner.database_url`` name a server such as
``postgresql+psycopg://user@host/db``, which trainer and aligner may share: every row carries the
service it belongs to.

A job is stored as the JSON of its :class:`~swiftmesh.jobkit.types.Job` record (its spec the JSON
of the kind's domain spec) next to the indexed columns used for listing; events as JSON
:class:`~swiftmesh.jobkit.types.JobEvent` records numbered from 1 per job. A change of a job and
the event that reports it are written in one transaction (:meth:`JobStore.update`).

Upgrades need no manual step: a ``jobs.db`` of the previous version (tables ``job_records`` /
``job_events`` without a service column) and one of the version before (tables ``jobs`` /
``events`` of serialized protos) are migrated in place on open; the rows they held are taken
over by the first service that opens the file (:meth:`JobStore.__init__`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import sqlalchemy as sa

from swiftmesh.jobkit.types import Job, JobEvent, now
from swiftmesh.runtime.database import open_database, sqlite_url
from swiftmesh.runtime.errors import AlreadyExists, NotFound

#: The Alembic branch of the jobs tables (revisions ``01xx_jobs_*``).
BRANCH = "jobs"
#: The service of rows migrated from a database that predates the service column.
UNOWNED = ""

_metadata = sa.MetaData()
#: Created by migration 0101 of :mod:`swiftmesh.migrations`.
job_records = sa.Table(
    "job_records", _metadata,
    sa.Column("service", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("uid", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("state", sa.Integer, nullable=False),
    sa.Column("create_time", sa.Float, nullable=False),
    sa.Column("record", sa.Text, nullable=False),
    sa.Column("plan", sa.Text),  # the kind's plan (JSON), written once the job is validated
)
job_events = sa.Table(
    "job_events", _metadata,
    sa.Column("service", sa.Text, primary_key=True),
    sa.Column("job", sa.Text, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("record", sa.Text, nullable=False),
)


def database_url(url: str | None, state_dir: str | Path) -> str:
    """The jobs database of a service: ``url`` (``<service>.database_url``) or
    ``sqlite:///<state_dir>/jobs.db``."""
    return url or sqlite_url(Path(state_dir) / "jobs.db")


class JobStore:
    """Job records and events of one service.

    Args:
        url_or_path: a SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg://...``) or a SQLite
            file path (its directory is created). The schema is migrated on open.
        service: whose jobs ("trainer", "aligner"): several services may share one database.

    Thread-safe (writes are serialised by a lock; each call is one transaction). Raises
    :class:`NotFound` for unknown jobs and :class:`AlreadyExists` for a taken name;
    ``sqlalchemy.exc.OperationalError`` when the database cannot be reached.
    """

    def __init__(self, url_or_path: str | Path, service: str = "jobs") -> None:
        url = str(url_or_path)
        self.url = url if "://" in url else sqlite_url(url)
        self.service = service
        self._lock = threading.RLock()
        self.engine = open_database(self.url, branch=BRANCH)
        with self._lock, self.engine.begin() as db:
            # Rows migrated from a jobs.db of an older version belong to the service that owns the file.
            for t in (job_records, job_events):
                db.execute(t.update().where(t.c.service == UNOWNED).values(service=service))

    def _mine(self, table: sa.Table):
        return table.c.service == self.service

    # Jobs ------------------------------------------------------------------------------
    def insert(self, job: Job, plan: str | None = None, event: JobEvent | None = None) -> JobEvent | None:
        """Store a new job (and its plan JSON, and the event announcing it, in one transaction).

        Returns the stored event (numbered), if any. AlreadyExists when the name is taken.
        """
        with self._lock, self.engine.begin() as db:
            taken = db.execute(sa.select(job_records.c.name).where(
                self._mine(job_records), job_records.c.name == job.name)).first()
            if taken is not None:
                raise AlreadyExists(f"job {job.name} already exists", reason="JOB_EXISTS")
            db.execute(job_records.insert().values(
                service=self.service, name=job.name, uid=job.uid, kind=job.kind, state=int(job.state),
                create_time=job.create_time or now(), record=_dump(job), plan=plan))
            return self._append(db, event) if event is not None else None

    def _get(self, db: sa.Connection, name: str, *, for_update: bool = False) -> Job:
        q = sa.select(job_records.c.record).where(self._mine(job_records), job_records.c.name == name)
        row = db.execute(q.with_for_update() if for_update else q).first()
        if row is None:
            raise NotFound(f"job {name} does not exist", reason="JOB_NOT_FOUND", metadata={"job": name})
        return Job.from_json(json.loads(row[0]))

    def get(self, name: str) -> Job:
        """The job record; NotFound (reason JOB_NOT_FOUND) when there is none."""
        with self.engine.connect() as db:
            return self._get(db, name)

    def plan(self, name: str) -> str | None:
        """The plan JSON stored with the job (None before it was validated)."""
        with self.engine.connect() as db:
            row = db.execute(sa.select(job_records.c.plan).where(
                self._mine(job_records), job_records.c.name == name)).first()
        if row is None:
            raise NotFound(f"job {name} does not exist", reason="JOB_NOT_FOUND")
        return row[0]

    def update(self, name: str, mutate: Callable[[Job], None], event: JobEvent | Callable[[Job], JobEvent | None]
               | None = None) -> tuple[Job, JobEvent | None]:
        """Read-modify-write of one job, and the event that reports the change, in one transaction.

        ``mutate`` changes the record in place (it may raise to abort, e.g. FailedPrecondition
        for a refused transition: nothing is written then). ``event`` is the event to append, or
        a function of the changed job that returns it (or None). Returns the new record and the
        stored event.
        """
        with self._lock, self.engine.begin() as db:
            job = self._get(db, name, for_update=True)
            mutate(job)
            job.update_time = now()
            ev = event(job) if callable(event) else event
            db.execute(job_records.update().where(self._mine(job_records), job_records.c.name == name)
                       .values(state=int(job.state), record=_dump(job)))
            return job, (self._append(db, ev) if ev is not None else None)

    def list(
        self,
        *,
        states: Iterable[int] = (),
        kinds: Iterable[str] = (),
        offset: int = 0,
        limit: int = 50,
    ) -> list[Job]:
        """Jobs newest first, filtered by state and kind; ``limit`` rows from ``offset``."""
        q = sa.select(job_records.c.record).where(self._mine(job_records))
        states, kinds = [int(s) for s in states], list(kinds)
        if states:
            q = q.where(job_records.c.state.in_(states))
        if kinds:
            q = q.where(job_records.c.kind.in_(kinds))
        q = q.order_by(job_records.c.create_time.desc(), job_records.c.name).limit(limit).offset(offset)
        with self.engine.connect() as db:
            return [Job.from_json(json.loads(r[0])) for r in db.execute(q)]

    def delete(self, name: str) -> None:
        """Remove the job and its events (nothing when it does not exist)."""
        with self._lock, self.engine.begin() as db:
            db.execute(job_records.delete().where(self._mine(job_records), job_records.c.name == name))
            db.execute(job_events.delete().where(self._mine(job_events), job_events.c.job == name))

    # Events ----------------------------------------------------------------------------
    def append_event(self, event: JobEvent) -> JobEvent:
        """Number the event (next sequence of its job), timestamp it if unset, store it."""
        with self._lock, self.engine.begin() as db:
            return self._append(db, event)

    def _append(self, db: sa.Connection, event: JobEvent) -> JobEvent:
        last = db.execute(sa.select(sa.func.coalesce(sa.func.max(job_events.c.seq), 0)).where(
            self._mine(job_events), job_events.c.job == event.job)).scalar_one()
        event.sequence = int(last) + 1
        if not event.time:
            event.time = now()
        db.execute(job_events.insert().values(service=self.service, job=event.job, seq=event.sequence,
                                              time=event.time, record=_dump(event)))
        return event

    def events(self, job: str, start_sequence: int = 1, limit: int = 10_000) -> list[JobEvent]:
        """Up to ``limit`` events of ``job`` from ``start_sequence`` (>= 1), in order."""
        q = (sa.select(job_events.c.record)
             .where(self._mine(job_events), job_events.c.job == job, job_events.c.seq >= max(1, start_sequence))
             .order_by(job_events.c.seq).limit(limit))
        with self.engine.connect() as db:
            return [JobEvent.from_json(json.loads(r[0])) for r in db.execute(q)]

    def close(self) -> None:
        """Close the database (its connection pool); a later call reconnects."""
        self.engine.dispose()


def _dump(record) -> str:
    return json.dumps(record.to_json(), separators=(",", ":"))
