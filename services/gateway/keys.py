"""API keys of the gateway, stored hashed in the gateway database (:mod:`swiftmesh.runtime.database`:
SQLite ``<gateway_state_dir>/gateway.db`` by default, or ``gateway.database_url``, e.g. PostgreSQL).

A key's secret (``sk-`` followed by 43 URL-safe characters, 256 random bits) is returned once,
at creation; the store keeps only its SHA-256 (a fast hash is enough for random secrets of this
length, and it lets a request's key be found by an indexed lookup). Each key has optional
per-minute limits on requests and on prompt + completion tokens (0: unlimited), enforced by
:mod:`swiftmesh.services.gateway.ratelimit`, and an ``admin`` flag for the admin endpoints.

The database is opened by :func:`swiftmesh.runtime.database.open_database` (Alembic migrations on
open; SQLite with WAL, busy timeout, ``synchronous=FULL``), so several gateway processes (replicas
on one SQLite file or on one PostgreSQL) share the store; keys created or deleted by one are seen
by the others at their next lookup (nothing is cached).
Listings page with the shared token scheme (:mod:`swiftmesh.runtime.paging`).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from swiftmesh.runtime.config import ConfigError
from swiftmesh.runtime.database import open_database, sqlite_url
from swiftmesh.runtime.errors import InvalidArgument, NotFound, Unavailable
from swiftmesh.runtime.paging import page

SECRET_PREFIX = "sk-"
#: Characters of the secret kept in clear (``prefix``) to tell keys apart in listings.
PREFIX_CHARS = 10
MAX_DISPLAY_NAME = 128

_metadata = sa.MetaData()
#: The table (created by migration 0001 of :mod:`swiftmesh.migrations`).
api_keys = sa.Table(
    "api_keys", _metadata,
    sa.Column("key_id", sa.Text, primary_key=True),
    sa.Column("display_name", sa.Text, nullable=False),
    sa.Column("secret_sha256", sa.Text, nullable=False, unique=True),
    sa.Column("prefix", sa.Text, nullable=False),
    sa.Column("requests_per_minute", sa.Integer, nullable=False),
    sa.Column("tokens_per_minute", sa.Integer, nullable=False),
    sa.Column("admin", sa.Integer, nullable=False),
    sa.Column("create_time", sa.Float, nullable=False),
)
_COLUMNS = [api_keys.c[n] for n in ("key_id", "display_name", "prefix", "requests_per_minute",
                                    "tokens_per_minute", "admin", "create_time")]


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


def database_url(url: str | None, state_dir: Path) -> str:
    """The gateway database: ``url`` (``gateway.database_url``) or ``sqlite:///<state_dir>/gateway.db``.

    A ``<state_dir>/keys.sqlite`` written before the database layer is copied (SQLite's online
    backup, WAL included) to ``gateway.db`` when that does not exist yet, then migrated in place.
    """
    if url:
        return url
    path, legacy = state_dir / "gateway.db", state_dir / "keys.sqlite"
    if not path.exists() and legacy.exists():
        src, dst = sqlite3.connect(legacy), sqlite3.connect(path)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
    return sqlite_url(path)


def _shown(url: str) -> str:
    """``url`` without its password (as given when it does not parse)."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


class ApiKeyStore:
    """The store of API keys on the gateway database. Thread-safe; each call is one transaction.

    Args:
        url_or_path: a SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg://...``) or a
            SQLite file path (its directory is created). The schema is migrated on open.

    Raises:
        ConfigError: the URL is not a database URL SQLAlchemy can use, or the database cannot be
            reached or migrated; the message names the URL (password hidden) and the setting.
    """

    def __init__(self, url_or_path: str | Path) -> None:
        url = str(url_or_path)
        self.url = url if "://" in url else sqlite_url(url)
        try:
            self.engine = open_database(self.url, "gateway")  # the gateway's Alembic branch only
        except (sa.exc.ArgumentError, sa.exc.DBAPIError) as e:
            reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
            raise ConfigError(f"gateway database {_shown(self.url)} cannot be used: {reason}. Check "
                              "gateway.database_url (SWIFTMESH_GATEWAY__DATABASE_URL, serve --database-url), "
                              "e.g. postgresql+psycopg://user@host:5432/db, and that the server runs") from None

    def close(self) -> None:
        """Close the database (its connection pool)."""
        self.engine.dispose()

    @staticmethod
    def _row(row) -> ApiKey:
        key_id, display_name, prefix, rpm, tpm, admin, created = row
        return ApiKey(key_id, display_name, prefix, int(rpm), int(tpm), bool(admin), float(created))

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
        with self.engine.begin() as db:
            db.execute(api_keys.insert().values(
                key_id=key.key_id, display_name=key.display_name, secret_sha256=hash_secret(secret),
                prefix=key.prefix, requests_per_minute=key.requests_per_minute,
                tokens_per_minute=key.tokens_per_minute, admin=int(key.admin), create_time=key.create_time))
        return key, secret

    def list(self, page_size: int = 0, page_token: str = "") -> tuple[list[ApiKey], str]:
        """Keys in creation order, ``page_size`` at a time (0: 100, at most 1000). Returns the keys
        and the next page token ("" after the last page). A bad token (or a negative size) raises
        InvalidArgument."""
        p = page(page_size, page_token, "api_keys", default=100)
        query = (sa.select(*_COLUMNS).order_by(api_keys.c.create_time, api_keys.c.key_id)
                 .limit(p.size + 1).offset(p.offset))
        with self.engine.connect() as db:
            rows = db.execute(query).fetchall()
        return [self._row(r) for r in rows[:p.size]], p.next_token(len(rows) > p.size)

    def get(self, key_id: str) -> ApiKey:
        """A key by id. NotFound if there is no such key."""
        with self.engine.connect() as db:
            row = db.execute(sa.select(*_COLUMNS).where(api_keys.c.key_id == key_id)).fetchone()
        if row is None:
            raise NotFound(f"API key apiKeys/{key_id} not found", reason="API_KEY_NOT_FOUND")
        return self._row(row)

    def delete(self, key_id: str) -> None:
        """Delete a key; requests with it fail from then on. NotFound if there is no such key."""
        with self.engine.begin() as db:
            cur = db.execute(api_keys.delete().where(api_keys.c.key_id == key_id))
        if cur.rowcount == 0:
            raise NotFound(f"API key apiKeys/{key_id} not found", reason="API_KEY_NOT_FOUND")

    def verify(self, secret: str) -> ApiKey | None:
        """The key whose secret this is, or None. Unavailable (HTTP 503) while the database
        cannot be reached."""
        if not secret.startswith(SECRET_PREFIX):
            return None
        try:
            with self.engine.connect() as db:
                row = db.execute(sa.select(*_COLUMNS).where(api_keys.c.secret_sha256 == hash_secret(secret))).fetchone()
        except sa.exc.DBAPIError as e:
            raise Unavailable(f"the gateway database is unreachable ({type(e.orig or e).__name__}); try again",
                              retry_after=1.0, reason="DATABASE_UNAVAILABLE") from None
        return self._row(row) if row else None

    def count(self) -> int:
        """How many keys there are."""
        with self.engine.connect() as db:
            return int(db.execute(sa.select(sa.func.count()).select_from(api_keys)).scalar_one())
