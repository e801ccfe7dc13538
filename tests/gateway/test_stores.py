"""Issue 14: the gateway's shared stores fail clearly. A database or rate-limit URL that cannot
work is a ConfigError at start naming the setting (password hidden); a store that goes away
answers 503 (Unavailable, retry after 1 s), never a 500."""

from __future__ import annotations

import pytest

from swiftmesh.runtime.config import ConfigError
from swiftmesh.runtime.errors import Unavailable
from swiftmesh.services.gateway.keys import ApiKeyStore
from swiftmesh.services.gateway.ratelimit import RateLimiter
from swiftmesh.testing.servers import postgres_server
from swiftmesh.testing.services import free_port


@pytest.mark.parametrize("url", ["foo://bar", "postgresql+psycopg://me:s3cret@127.0.0.1:{port}/db"])
def test_unusable_database_url_is_a_config_error(url):
    with pytest.raises(ConfigError) as e:
        ApiKeyStore(url.format(port=free_port()))
    message = str(e.value)
    assert "SWIFTMESH_GATEWAY__DATABASE_URL" in message and "s3cret" not in message


def test_unknown_rate_limit_storage_is_a_config_error():
    with pytest.raises(ConfigError, match="SWIFTMESH_GATEWAY__REDIS_URL"):
        RateLimiter("foo://bar")


def test_unreachable_redis_is_503_not_500():
    limiter = RateLimiter(f"redis://127.0.0.1:{free_port()}")
    with pytest.raises(Unavailable, match="rate-limit storage") as e:
        limiter.acquire("k", 5, 0)
    assert e.value.retry_after == 1.0
    limiter.record_tokens("k", 10, 100)  # a finished request's tokens: logged, not raised
    assert limiter.acquire("k", 0, 0).requests == -1  # no limits: no storage needed


def test_database_gone_is_503(tmp_path):
    """PostgreSQL stops under a running store: key lookups are 503 until it is back."""
    try:
        with postgres_server(tmp_path) as url:
            store = ApiKeyStore(url)
            _, secret = store.create("k")
            assert store.verify(secret) is not None
    except FileNotFoundError as e:
        pytest.skip(str(e))
    with pytest.raises(Unavailable, match="database is unreachable"):
        store.verify(secret)
    store.close()


def test_the_gateway_database_holds_the_gateway_tables_only(tmp_path):
    import sqlalchemy as sa

    store = ApiKeyStore(tmp_path / "gateway.db")
    assert set(sa.inspect(store.engine).get_table_names()) == {
        "alembic_version", "api_keys", "gateway_workers", "api_key_usage"}
    store.close()


def test_redis_that_never_answers_is_503_within_the_timeout():
    """A Redis that accepts connections but never answers (hung, or a black hole behind a
    balancer): the call fails after REMOTE_TIMEOUT_S instead of stalling the gateway."""
    import socket
    import time

    from swiftmesh.services.gateway.ratelimit import REMOTE_TIMEOUT_S

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        limiter = RateLimiter(f"redis://127.0.0.1:{silent.getsockname()[1]}")
        assert limiter.remote
        start = time.monotonic()
        with pytest.raises(Unavailable):
            limiter.acquire("k", 5, 0)
        assert time.monotonic() - start < 3 * REMOTE_TIMEOUT_S + 1
