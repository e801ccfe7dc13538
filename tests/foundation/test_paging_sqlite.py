"""The one page-token scheme and the one SQLite opener."""

from __future__ import annotations

import sqlite3

import pytest

from swiftmesh.runtime import paging, sqlite
from swiftmesh.runtime.errors import InvalidArgument


def test_pages_walk_a_query_and_end_with_an_empty_token():
    rows = list(range(7))
    token, seen = "", []
    while True:
        p = paging.page(3, token, {"kind": "sft"})
        chunk = rows[p.offset:p.offset + p.size]
        seen += chunk
        token = p.next_token(more=p.offset + p.size < len(rows))
        if not token:
            break
    assert seen == rows


def test_page_size_defaults_and_cap():
    assert paging.page(0, "").size == paging.DEFAULT_PAGE_SIZE
    assert paging.page(0, "", default=100).size == 100
    assert paging.page(10**6, "").size == paging.MAX_PAGE_SIZE


@pytest.mark.parametrize("token", ["garbage", "e30", "!!!", paging.Page(-5, 1, paging.fingerprint(None)).next_token(True)])
def test_bad_tokens_name_page_token(token):
    with pytest.raises(InvalidArgument) as e:
        paging.page(10, token)
    assert [v.field for v in e.value.field_violations] == ["page_token"]


def test_a_token_is_only_valid_for_its_own_query():
    token = paging.page(2, "", {"state": [1]}).next_token(True)
    assert paging.page(2, token, {"state": [1]}).offset == 2
    with pytest.raises(InvalidArgument):
        paging.page(2, token, {"state": [2]})


def test_negative_page_size_is_refused():
    with pytest.raises(InvalidArgument) as e:
        paging.page(-1, "")
    assert e.value.field_violations[0].field == "page_size"


def test_sqlite_connect_is_durable_wal_and_transactions_roll_back(tmp_path):
    db = sqlite.connect(tmp_path / "sub" / "x.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    db.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(RuntimeError), sqlite.transaction(db):
        db.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("half-written")
    with sqlite.transaction(db):
        db.execute("INSERT INTO t VALUES (2)")
    other = sqlite3.connect(tmp_path / "sub" / "x.db")
    assert other.execute("SELECT x FROM t").fetchall() == [(2,)]
