"""Usage per API key (requests admitted, prompt + completion tokens) on the gateway database
(table ``api_key_usage``, migration 0003), so replicas on one database add up into one count.

Counting happens in memory (:meth:`UsageLedger.add`, no I/O on the request path) and is written
by :meth:`UsageLedger.flush` as increments (``requests = requests + n``): one short transaction
every ``flush_interval_s`` (default 1 s) from the gateway's loop, and at stop. A gateway killed
with SIGKILL loses at most the counts of its last interval; counts of several replicas never
overwrite each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa

log = logging.getLogger("swiftmesh.gateway.usage")

#: The table (created by migration 0003 of :mod:`swiftmesh.migrations`).
api_key_usage = sa.Table(
    "api_key_usage", sa.MetaData(),
    sa.Column("key_id", sa.Text, primary_key=True),
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("last_use_time", sa.Float, nullable=False),
)


@dataclass(frozen=True)
class KeyUsage:
    """What a key used since it was made: admitted requests, tokens (prompt + completion) and
    the unix time of its last request (0: never used)."""

    requests: int = 0
    tokens: int = 0
    last_use_time: float = 0.0


class UsageLedger:
    """Per-key usage counts, buffered in memory and added to the database (thread-safe).

    Args:
        engine: the gateway database (``ApiKeyStore.engine``), migrated.
        flush_interval_s: seconds between writes while :meth:`run` runs (> 0).
    """

    def __init__(self, engine: sa.Engine, flush_interval_s: float = 1.0) -> None:
        if flush_interval_s <= 0:
            raise ValueError(f"flush_interval_s must be > 0, got {flush_interval_s}")
        self.engine = engine
        self.flush_interval_s = flush_interval_s
        self._pending: dict[str, list[float]] = {}  # key_id -> [requests, tokens, last_use_time]
        self._lock = threading.Lock()
        self._task: asyncio.Task | None = None

    def add(self, key_id: str, requests: int = 0, tokens: int = 0) -> None:
        """Count ``requests`` and ``tokens`` (>= 0) for ``key_id`` (written at the next flush)."""
        with self._lock:
            row = self._pending.setdefault(key_id, [0, 0, 0.0])
            row[0] += requests
            row[1] += tokens
            row[2] = time.time()

    def flush(self) -> None:
        """Add what was counted since the last flush to the database (one transaction). On a
        database error the counts stay buffered for the next flush and the error is raised."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            with self.engine.begin() as db:
                for key_id, (requests, tokens, last) in sorted(pending.items()):
                    self._add_row(db, key_id, int(requests), int(tokens), last)
        except Exception:
            with self._lock:
                for key_id, (requests, tokens, last) in pending.items():
                    row = self._pending.setdefault(key_id, [0, 0, 0.0])
                    row[0] += requests
                    row[1] += tokens
                    row[2] = max(row[2], last)
            raise

    @staticmethod
    def _add_row(db: sa.Connection, key_id: str, requests: int, tokens: int, last: float) -> None:
        t = api_key_usage.c
        values = {"requests": t.requests + requests, "tokens": t.tokens + tokens,
                  "last_use_time": sa.func.greatest(t.last_use_time, last) if db.dialect.name == "postgresql"
                  else sa.func.max(t.last_use_time, last)}
        if db.execute(api_key_usage.update().where(t.key_id == key_id).values(**values)).rowcount:
            return
        try:
            with db.begin_nested():
                db.execute(api_key_usage.insert().values(key_id=key_id, requests=requests, tokens=tokens,
                                                         last_use_time=last))
        except sa.exc.IntegrityError:  # another replica inserted it meanwhile
            db.execute(api_key_usage.update().where(t.key_id == key_id).values(**values))

    def usage(self, key_ids: list[str]) -> dict[str, KeyUsage]:
        """The usage of ``key_ids`` (flushed first; keys never used are absent)."""
        self.flush()
        if not key_ids:
            return {}
        with self.engine.connect() as db:
            rows = db.execute(sa.select(api_key_usage).where(api_key_usage.c.key_id.in_(key_ids))).fetchall()
        return {r.key_id: KeyUsage(int(r.requests), int(r.tokens), float(r.last_use_time)) for r in rows}

    def forget(self, key_id: str) -> None:
        """Drop the usage of a deleted key."""
        with self._lock:
            self._pending.pop(key_id, None)
        with self.engine.begin() as db:
            db.execute(api_key_usage.delete().where(api_key_usage.c.key_id == key_id))

    # ------------------------------------------------------------ background flushing
    async def run(self) -> None:
        """Flush every ``flush_interval_s`` until cancelled (errors are logged and retried)."""
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await asyncio.to_thread(self.flush)
            except Exception as e:  # noqa: BLE001 - the database may be back at the next flush
                log.warning("usage flush failed (kept for the next one): %s", e)

    def start(self) -> None:
        """Start :meth:`run` on the running loop."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="gateway-usage-flush")

    async def stop(self) -> None:
        """Stop flushing in the background and flush what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await asyncio.to_thread(self.flush)
        except Exception as e:  # noqa: BLE001
            log.warning("usage flush at stop failed: %s", e)
