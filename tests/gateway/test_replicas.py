"""Two gateway replicas (separate processes) on one PostgreSQL and one Redis (real servers from
the system packages, swiftmesh.testing.servers): shared API keys, shared rate-limit windows,
per-address anonymous limits, usage per key adding up, and the worker registry surviving a kill -9
of a gateway."""

from __future__ import annotations

import time

import httpx
import pytest

from swiftmesh.clients.gateway import GatewayClient
from swiftmesh.testing.servers import postgres_server, redis_server
from swiftmesh.testing.services import ServiceProcess, run_sync, settings_for

ANON_RPM = 3


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("servers")
    try:
        with postgres_server(root) as pg, redis_server(root) as redis:
            yield pg, redis
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def worker(tmp_path_factory, tiny_model_dir):
    settings = settings_for(tmp_path_factory.mktemp("worker"),
                            worker={"model": str(tiny_model_dir), "device": "cpu"},
                            telemetry={"log_level": "WARNING"})
    with ServiceProcess("worker", settings, env={"OMP_NUM_THREADS": "1"}).start() as proc:
        proc.wait_ready(180)
        yield proc


def _gateway(tmp, servers, **gateway) -> ServiceProcess:
    pg, redis = servers
    settings = settings_for(tmp, gateway={"database_url": pg, "redis_url": redis, "health_check_interval_s": 0.5,
                                          "anonymous_requests_per_minute": ANON_RPM, **gateway},
                            telemetry={"log_level": "WARNING"})
    return ServiceProcess("gateway", settings).start()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, servers, worker):
    a = _gateway(tmp_path_factory.mktemp("gw-a"), servers)
    b = _gateway(tmp_path_factory.mktemp("gw-b"), servers)
    with a, b:
        a.wait_ready(120)
        b.wait_ready(120)
        run_sync(_register(a, worker.target))
        yield a, b


async def _register(gw: ServiceProcess, address: str) -> None:
    async with GatewayClient(gw.settings) as c:
        await c.register_worker(address)


async def _create_key(gw: ServiceProcess, **limits) -> str:
    async with GatewayClient(gw.settings) as c:
        return (await c.create_api_key("replica-test", **limits))[1]


async def _list_keys(gw: ServiceProcess) -> list:
    async with GatewayClient(gw.settings) as c:
        return await c.list_api_keys()


def _chat(gw: ServiceProcess, model: str, key: str | None = None, forwarded: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if forwarded:
        headers["x-forwarded-for"] = forwarded
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    return httpx.post(f"{gw.http_url}/v1/chat/completions", json=body, headers=headers, timeout=120)


def _wait_routable(gw: ServiceProcess, model: str, key: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{gw.http_url}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=10)
        if r.status_code == 200 and any(m["id"] == model for m in r.json()["data"]):
            return
        assert time.monotonic() < deadline, f"{model} never listed by {gw.http_url}: {r.status_code} {r.text}"
        time.sleep(0.3)


def test_key_made_on_one_replica_works_on_the_other_and_limits_count_together(replicas, tiny_model_dir):
    a, b = replicas
    model = tiny_model_dir.name
    secret = run_sync(_create_key(a, requests_per_minute=10))
    # b learns the worker a registered from the shared registry.
    _wait_routable(b, model, secret)
    _wait_routable(a, model, secret)
    codes = [_chat(gw, model, secret).status_code for gw in [a, b] * 5]
    assert codes == [200] * 10
    refused = _chat(b, model, secret)
    assert refused.status_code == 429, refused.text
    assert float(refused.headers["retry-after"]) > 0
    assert _chat(a, model, secret).status_code == 429
    # Usage adds up in the shared database: 10 admitted requests (not the refused ones), their tokens.
    deadline = time.monotonic() + 10
    while True:
        used = next(k for k in run_sync(_list_keys(b)) if k.prefix == secret[:10]).usage
        if used.requests == 10 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert used.requests == 10 and used.tokens >= 10 * 2 and used.last_use_time.seconds > 0


def test_anonymous_callers_limited_per_address_across_replicas(replicas, tiny_model_dir):
    a, b = replicas
    model = tiny_model_dir.name
    codes = [_chat(gw, model).status_code for gw in (a, b, a)]
    assert codes == [200] * ANON_RPM
    r = _chat(b, model)
    assert r.status_code == 429 and "retry-after" in r.headers, r.text


def test_anonymous_callers_behind_a_trusted_proxy_are_limited_by_their_own_address(replicas, tiny_model_dir):
    """The replicas trust loopback proxies (the default): X-Forwarded-For names the client, so
    each client behind the load balancer has its own window, shared by the replicas."""
    a, b = replicas
    model = tiny_model_dir.name
    client = "203.0.113.7"
    codes = [_chat(gw, model, forwarded=client).status_code for gw in (a, b, a)]
    assert codes == [200] * ANON_RPM
    assert _chat(b, model, forwarded=client).status_code == 429
    assert _chat(a, model, forwarded="203.0.113.8").status_code == 200  # another client


def test_killed_gateway_rereads_its_workers_from_the_registry(replicas, tiny_model_dir):
    a, _ = replicas
    secret = run_sync(_create_key(a))
    a.kill()  # SIGKILL
    a.start().wait_ready(120)
    _wait_routable(a, tiny_model_dir.name, secret)
    assert _chat(a, tiny_model_dir.name, secret).status_code == 200


def test_sqlite_keys_file_from_before_is_upgraded_in_place(tmp_path):
    import sqlite3

    from swiftmesh.services.gateway.keys import ApiKeyStore, database_url, hash_secret
    from swiftmesh.services.gateway.workers import WorkerRegistry

    legacy = tmp_path / "keys.sqlite"
    with sqlite3.connect(legacy) as db:
        db.execute("CREATE TABLE api_keys (key_id TEXT PRIMARY KEY, display_name TEXT NOT NULL,"
                   " secret_sha256 TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, requests_per_minute INTEGER NOT NULL"
                   " DEFAULT 0, tokens_per_minute INTEGER NOT NULL DEFAULT 0, admin INTEGER NOT NULL DEFAULT 0,"
                   " create_time REAL NOT NULL)")
        db.execute("INSERT INTO api_keys VALUES ('old', 'from before', ?, 'sk-old', 5, 0, 1, 1.0)",
                   (hash_secret("sk-old-secret"),))
    store = ApiKeyStore(database_url(None, tmp_path))
    assert (tmp_path / "gateway.db").exists()
    key = store.verify("sk-old-secret")
    assert key is not None and key.key_id == "old" and key.admin and key.requests_per_minute == 5
    WorkerRegistry(store.engine).add("127.0.0.1:1")  # table of a later migration exists
    assert WorkerRegistry(ApiKeyStore(database_url(None, tmp_path)).engine).addresses() == ["127.0.0.1:1"]
