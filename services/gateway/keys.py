"""API keys of the gateway, stored hashed in SQLite (``<gateway_state_dir>/keys.sqlite``).

A key's secret (``sk-`` followed by 43 URL-safe characters, 256 random bits) is returned once,
at creation; the store keeps only its SHA-256 (a fast hash is enough for random secrets of this
length, and it lets a request's key be found by an indexed lookup). Each key has optional
per-minute limits on requests and on prompt + completion tokens (0: unlimited), enforced by
:mod:`swiftmesh.services.gateway.ratelimit`, and an ``admin`` flag for the admin endpoints.

The database is opened by the shared opener (:func:`swiftmesh.runtime.sqlite.connect`: WAL, busy
timeout, ``synchronous=FULL``), so several gateway processes on one host share the store; keys
created or deleted by one are seen by the others at their next lookup (nothing is cached).
Listings page with the shared token scheme (:mod:`swiftmesh.runtime.paging`).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from swiftmesh.runtime.errors import InvalidArgument, NotFound
from swiftmesh.runtime.paging import page
from swiftmesh.runtime.sqlite import connect

SECRET_PREFIX = "sk-"
#: Characters of the secret kept in clear (``prefix``) to tell keys apart in listings.
PREFIX_CHARS = 10
MAX_DISPLAY_NAME = 128

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    requests_per_minute INTEGER NOT NULL DEFAULT 0,
    tokens_per_minute INTEGER NOT NULL DEFAULT 0,
    admin INTEGER NOT NULL DEFAULT 0,
    create_time REAL NOT NULL
)
"""


@dataclass(frozen=True)
class ApiKey:
    """A stored key (never its secret). ``name`` is the resource name ``apiKeys/{key_id}``."""

    key_id: str
    display_name: str
    prefix: str
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    admin: bool = False
    create_time: float = 0.0

    @property
    def name(self) -> str:
        """``apiKeys/{key_id}``."""
        return f"apiKeys/{self.key_id}"


def hash_secret(secret: str) -> str:
    """The hex SHA-256 of a secret, as stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


def key_id_from_name(name: str) -> str:
    """``apiKeys/{id}`` (or a bare id) -> id; InvalidArgument for anything else."""
    key_id = name.removeprefix("apiKeys/")
    if not key_id or "/" in key_id:
        raise InvalidArgument(f"invalid API key name {name!r}: expected 'apiKeys/{{key}}'",
                              field_violations=[("name", "expected 'apiKeys/{key}'")])
    return key_id


class ApiKeyStore:
    """The SQLite store of API keys. Thread-safe; each call is one short transaction.

    Args:
        path: the database file (its directory is created).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = connect(self.path)
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @staticmethod
    def _row(row: tuple) -> ApiKey:
        key_id, display_name, prefix, rpm, tpm, admin, created = row
        return ApiKey(key_id, display_name, prefix, int(rpm), int(tpm), bool(admin), float(created))

    _COLUMNS = "key_id, display_name, prefix, requests_per_minute, tokens_per_minute, admin, create_time"

    def create(
        self,
        display_name: str = "",
        requests_per_minute: int = 0,
        tokens_per_minute: int = 0,
        admin: bool = False,
    ) -> tuple[ApiKey, str]:
        """Create a key. Returns ``(key, secret)``; the secret is not stored and cannot be
        recovered. Limits are per minute, 0 for unlimited; negative limits or a display name
        over 128 characters raise InvalidArgument."""
        problems = []
        if requests_per_minute < 0:
            problems.append(("requests_per_minute", "must be >= 0 (0: unlimited)"))
        if tokens_per_minute < 0:
            problems.append(("tokens_per_minute", "must be >= 0 (0: unlimited)"))
        if len(display_name) > MAX_DISPLAY_NAME:
            problems.append(("display_name", f"at most {MAX_DISPLAY_NAME} characters"))
        if problems:
            raise InvalidArgument("invalid API key settings: " + "; ".join(f"{f} {d}" for f, d in problems),
                                  field_violations=problems)
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            key_id=secrets.token_hex(8),
            display_name=display_name,
            prefix=secret[:PREFIX_CHARS],
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            admin=admin,
            create_time=time.time(),
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO api_keys (key_id, display_name, secret_sha256, prefix, requests_per_minute,"
                " tokens_per_minute, admin, create_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key.key_id, key.display_name, hash_secret(secret), key.prefix, key.requests_per_minute,
                 key.tokens_per_minute, int(key.admin), key.create_time),
            )
        return key, secret

    def list(self, page_size: int = 0, page_token: str = "") -> tuple[list[ApiKey], str]:
        """Keys in creation order, ``page_size`` at a time (0: 100, at most 1000). Returns the keys
        and the next page token ("" after the last page). A bad token (or a negative size) raises
        InvalidArgument."""
        p = page(page_size, page_token, "api_keys", default=100)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._COLUMNS} FROM api_keys ORDER BY create_time, key_id LIMIT ? OFFSET ?",
                (p.size + 1, p.offset),
            ).fetchall()
        return [self._row(r) for r in rows[:p.size]], p.next_token(len(rows) > p.size)

    def get(self, key_id: str) -> ApiKey:
        """A key by id. NotFound if there is no such key."""
        with self._lock:
            row = self._db.execute(f"SELECT {self._COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        if row is None:
            raise NotFound(f"API key apiKeys/{key_id} not found", reason="API_KEY_NOT_FOUND")
        return self._row(row)

    def delete(self, key_id: str) -> None:
        """Delete a key; requests with it fail from then on. NotFound if there is no such key."""
        with self._lock:
            cur = self._db.execute("DELETE FROM api_keys WHERE key_id = ?", (key_id,))
        if cur.rowcount == 0:
            raise NotFound(f"API key apiKeys/{key_id} not found", reason="API_KEY_NOT_FOUND")

    def verify(self, secret: str) -> ApiKey | None:
        """The key whose secret this is, or None."""
        if not secret.startswith(SECRET_PREFIX):
            return None
        with self._lock:
            row = self._db.execute(
                f"SELECT {self._COLUMNS} FROM api_keys WHERE secret_sha256 = ?", (hash_secret(secret),)
            ).fetchone()
        return self._row(row) if row else None

    def count(self) -> int:
        """How many keys there are."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0])
