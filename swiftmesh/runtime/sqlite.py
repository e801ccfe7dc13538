"""The one SQLite opener of every SwiftMesh store (hub cache, jobs, gateway keys).

Every connection is opened the same way: autocommit (``isolation_level=None``, so writes use
explicit ``BEGIN IMMEDIATE`` transactions), write-ahead logging so readers never block the writer,
a busy timeout so concurrent processes wait instead of failing, ``synchronous=FULL`` so a
committed transaction survives a power cut (SQLite's WAL docs: NORMAL may lose the last commits),
and foreign keys on. See https://www.sqlite.org/wal.html and https://www.sqlite.org/pragma.html.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

DEFAULT_BUSY_TIMEOUT_S = 30.0


def connect(path: str | Path, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
            check_same_thread: bool = False) -> sqlite3.Connection:
    """Open (creating its directory and file) the database at ``path``.

    Args:
        path: the database file.
        busy_timeout_s: how long a statement waits for another writer's lock, in seconds (30).
        check_same_thread: sqlite3's thread check (off: callers guard a shared connection with a lock).

    Returns:
        an autocommit connection in WAL mode with ``synchronous=FULL`` and foreign keys on.

    Raises:
        sqlite3.OperationalError: the file cannot be opened or is not a database.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=check_same_thread)
    try:
        db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        db.close()
        raise
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` on ``db`` (an autocommit connection from :func:`connect`);
    rolled back when the block raises. State changes and their events belong in one of these."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
