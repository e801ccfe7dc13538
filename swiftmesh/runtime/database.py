"""The SQL database layer of SwiftMesh stores: a SQLAlchemy 2.x engine from a URL, with the schema
kept current by Alembic on open.

Default: embedded SQLite (``sqlite:///<dir>/gateway.db``), opened with the same pragmas as
:mod:`swiftmesh.runtime.sqlite` (WAL, busy timeout, ``synchronous=FULL``, foreign keys). A server
URL such as ``postgresql+psycopg://user@host:5432/db`` lets several processes (gateway replicas)
share one store.

Migrations live in :mod:`swiftmesh.migrations` (one Alembic script directory; each store's tables
are created by its own revisions, so the jobs and hub stores can move onto this layer by adding
revisions, without a new mechanism). :func:`open_database` runs ``alembic upgrade head`` every
time, so an upgrade never needs a manual step; a revision that creates a table first checks that
it is missing, so a database written before Alembic (e.g. the old ``keys.sqlite``) is upgraded in
place. See https://docs.sqlalchemy.org/en/20/ and https://alembic.sqlalchemy.org/.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from swiftmesh.runtime.sqlite import DEFAULT_BUSY_TIMEOUT_S

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_upgrade_lock = threading.Lock()
_MIGRATION_LOCK_KEY = 0x5377_6D65  # pg_advisory_xact_lock key of schema upgrades


def sqlite_url(path: str | Path) -> str:
    """``sqlite:///<absolute path>`` for a database file."""
    return f"sqlite:///{Path(path).absolute()}"


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    # The pragmas of swiftmesh.runtime.sqlite.connect (WAL, FULL, busy timeout, foreign keys).
    cur = dbapi_connection.cursor()
    cur.execute(f"PRAGMA busy_timeout={int(DEFAULT_BUSY_TIMEOUT_S * 1000)}")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def create_database_engine(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` creates the file's directory; SQLite connections
    get the WAL/FULL pragmas). Raises ``sqlalchemy.exc.ArgumentError`` for a malformed URL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": DEFAULT_BUSY_TIMEOUT_S, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def upgrade(engine: Engine, branch: str | None = None) -> None:
    """``alembic upgrade <branch>@head`` (every head without ``branch``) on ``engine`` in one
    transaction (idempotent). A store names its branch (the jobs store: ``"jobs"``) so that only
    its tables are created. Concurrent callers are serialised: in one process by a lock, across
    processes on PostgreSQL by an advisory transaction lock, on SQLite by its write lock."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with _upgrade_lock, engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Replicas starting together: one migrates, the others wait and then find it done.
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, f"{branch}@head" if branch else "heads")


def open_database(url: str, branch: str | None = None) -> Engine:
    """:func:`create_database_engine` then :func:`upgrade` (of ``branch``): a store's engine, schema current."""
    engine = create_database_engine(url)
    upgrade(engine, branch)
    return engine
