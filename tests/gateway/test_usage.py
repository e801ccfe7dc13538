"""The usage ledger (issue 14) on a real SQLite database: counts buffered in memory, added as
increments so two gateways on one database add up, kept when the database fails, forgotten with
the key."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from swiftmesh.runtime.database import open_database, sqlite_url
from swiftmesh.services.gateway.usage import UsageLedger


@pytest.fixture
def engine(tmp_path):
    engine = open_database(sqlite_url(tmp_path / "gateway.db"), "gateway")
    yield engine
    engine.dispose()


def test_two_ledgers_on_one_database_add_up(engine):
    a, b = UsageLedger(engine), UsageLedger(engine)
    a.add("k1", requests=1)
    a.add("k1", tokens=7)
    b.add("k1", requests=2, tokens=5)
    b.add("k2", requests=1)
    assert a.usage(["k1", "k2"])["k1"].requests == 1  # b has not flushed yet
    b.flush()
    used = a.usage(["k1", "k2", "never"])
    assert (used["k1"].requests, used["k1"].tokens) == (3, 12)
    assert used["k2"].requests == 1 and "never" not in used
    assert used["k1"].last_use_time > 0


def test_counts_survive_a_failed_flush(tmp_path):
    engine = open_database(sqlite_url(tmp_path / "gateway.db"), "gateway")
    ledger = UsageLedger(engine)
    ledger.add("k", requests=2, tokens=3)
    with engine.begin() as db:
        db.execute(sa.text("ALTER TABLE api_key_usage RENAME TO moved"))
    with pytest.raises(sa.exc.OperationalError):
        ledger.flush()
    ledger.add("k", requests=1)
    with engine.begin() as db:
        db.execute(sa.text("ALTER TABLE moved RENAME TO api_key_usage"))
    assert ledger.usage(["k"])["k"].requests == 3 and ledger.usage(["k"])["k"].tokens == 3
    engine.dispose()


def test_forget_and_background_flush(engine):
    async def go() -> None:
        ledger = UsageLedger(engine, flush_interval_s=0.05)
        ledger.start()
        ledger.add("k", requests=4)
        await asyncio.sleep(0.3)
        fresh = UsageLedger(engine)
        assert fresh.usage(["k"])["k"].requests == 4  # written by the background flush
        ledger.add("k", requests=1)
        await ledger.stop()
        assert fresh.usage(["k"])["k"].requests == 5  # and at stop
        ledger.forget("k")
        assert fresh.usage(["k"]) == {}

    asyncio.run(go())


def test_bad_interval_is_refused(engine):
    with pytest.raises(ValueError, match="flush_interval_s"):
        UsageLedger(engine, flush_interval_s=0)
