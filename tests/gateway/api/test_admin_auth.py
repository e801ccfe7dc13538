"""Issue 13: every admin action (gRPC GatewayService, /v1/admin/* over HTTP) needs the service
token or an admin API key; a gateway with neither configured admits loopback callers only."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest
from pydantic import SecretStr

from services.gateway.api.auth import is_loopback
from swiftmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from swiftmesh.testing.services import start_in_process

from .conftest import gateway_settings


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """A gateway with required API keys (no service token), no workers; an admin and a plain key."""
    settings = gateway_settings(tmp_path_factory.mktemp("gw-admin"), workers=[], require_api_key=True)
    gw = start_in_process("gateway", settings)
    _, admin = gw.service.keys.create("admin", 0, 0, True)
    _, plain = gw.service.keys.create("plain", 0, 0, False)
    yield gw, admin, plain
    gw.stop(0.5)


def _create_key(gw, secret: str | None):
    async def call():
        async with grpc.aio.insecure_channel(gw.target) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            md = (("authorization", f"Bearer {secret}"),) if secret else ()
            return await stub.CreateApiKey(gateway_pb2.CreateApiKeyRequest(display_name="x", admin=True),
                                           metadata=md, timeout=30)
    return asyncio.run(call())


@pytest.mark.parametrize(("who", "code", "reason"), [
    (None, grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS"),
    ("sk-not-a-key", grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS"),
    ("plain", grpc.StatusCode.PERMISSION_DENIED, "ADMIN_REQUIRED"),
])
def test_grpc_create_api_key_needs_admin(secured, who, code, reason):
    gw, _, plain = secured
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _create_key(gw, plain if who == "plain" else who)
    assert info.value.code() == code
    assert _reason(info.value) == reason  # google.rpc ErrorInfo in the status details


def _reason(err: grpc.aio.AioRpcError) -> str:
    from google.rpc import error_details_pb2, status_pb2
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            st = status_pb2.Status.FromString(value)
            for d in st.details:
                info = error_details_pb2.ErrorInfo()
                if d.Unpack(info):
                    return info.reason
    return ""


def test_grpc_create_api_key_with_admin_key(secured):
    gw, admin, _ = secured
    made = _create_key(gw, admin)
    assert made.secret and made.api_key.admin


def test_http_admin_routes_need_admin_key(secured):
    gw, admin, plain = secured
    url = f"http://127.0.0.1:{gw.service.http_port}/v1/admin/workers"
    r = httpx.get(url, headers={"Authorization": f"Bearer {plain}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_permissions"
    assert httpx.get(url).status_code == 401
    # Security finding 5: another scheme is named as the problem, not "You didn't provide an API key".
    r = httpx.get(url, headers={"Authorization": f"Basic {admin}"})
    assert r.status_code == 401 and "Bearer scheme" in r.json()["error"]["message"], r.text
    assert "'Basic'" in r.json()["error"]["message"] and admin not in r.text
    assert httpx.get(url, headers={"Authorization": f"Bearer {admin}"}).status_code == 200


def test_unsecured_gateway_admin_is_loopback_only(tmp_path):
    gw = start_in_process("gateway", gateway_settings(tmp_path, workers=[]))
    try:
        local = httpx.get(f"http://127.0.0.1:{gw.service.http_port}/v1/admin/workers")
        assert local.status_code == 200

        async def remote():
            transport = httpx.ASGITransport(app=gw.service.app, client=("10.1.2.3", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
                return await c.post("/v1/admin/workers", json={"address": "10.9.9.9:1"})

        r = asyncio.run(remote())
        assert r.status_code == 403 and r.json()["error"]["code"] == "loopback_only"
        assert "10.1.2.3" in r.json()["error"]["message"]
    finally:
        gw.stop(0.5)


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("127.0.0.2") and is_loopback("::1")
    assert is_loopback("ipv4:127.0.0.1:5000") and is_loopback("ipv6:[::1]:5000")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1") and not is_loopback("ipv4:192.168.1.4:5000") and not is_loopback(None)


# -- issue 13 follow-up: an admin key must not point the gateway (and its service token) anywhere
TOKEN = "gw-service-token"


@pytest.fixture(scope="module")
def rogue():
    """A loopback 'worker' recording the metadata of each GetWorkerStatus it gets (answers empty)."""
    from concurrent import futures

    seen: list[dict] = []

    def status(request: bytes, context) -> bytes:
        seen.append(dict(context.invocation_metadata()))
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "swiftmesh.gateway.v1.InferenceService",
        {"GetWorkerStatus": grpc.unary_unary_rpc_method_handler(status)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, seen
    server.stop(0)


def test_admin_key_registers_allowed_hosts_only_and_never_leaks_the_token(tmp_path, rogue):
    port, seen = rogue
    settings = gateway_settings(tmp_path, workers=[], require_api_key=True, worker_allow_hosts=["localhost"])
    settings.auth_token = SecretStr(TOKEN)
    gw = start_in_process("gateway", settings)
    try:
        _, admin = gw.service.keys.create("admin", 0, 0, True)
        http = f"http://127.0.0.1:{gw.service.http_port}/v1/admin/workers"
        r = httpx.post(http, json={"address": f"127.0.0.1:{port}"}, headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 403, r.text
        assert "worker_allow_hosts" in r.json()["error"]["message"]

        # Over gRPC with the service token set, keys do not get past the AuthInterceptor (item 4).
        with pytest.raises(grpc.aio.AioRpcError) as info:
            asyncio.run(_grpc_register(gw, admin, f"127.0.0.1:{port}"))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # docs/security.md: with the token set, gRPC key management takes the token, not admin keys.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            _create_key(gw, admin)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _create_key(gw, TOKEN).secret
        assert seen == [] and gw.service.pool.workers() == []  # never called, nothing kept

        # An allowed host: registered by the admin key; a worker with the token: anywhere.
        r = httpx.post(http, json={"address": f"localhost:{port}"}, headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 200, r.text
        asyncio.run(_grpc_register(gw, TOKEN, f"127.0.0.1:{port}"))
        assert {w.address for w in gw.service.pool.workers()} == {f"localhost:{port}", f"127.0.0.1:{port}"}
        assert seen and all(md.get("authorization") == f"Bearer {TOKEN}" for md in seen)
    finally:
        gw.stop(0.5)


async def _grpc_register(gw, secret: str, address: str):
    async with grpc.aio.insecure_channel(gw.target) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        return await stub.RegisterWorker(gateway_pb2.RegisterWorkerRequest(address=address),
                                         metadata=(("authorization", f"Bearer {secret}"),), timeout=30)


def test_grpc_admin_key_registers_allowed_hosts_only(secured, rogue):
    gw, admin, _ = secured
    port, seen = rogue
    before = len(seen)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        asyncio.run(_grpc_register(gw, admin, f"127.0.0.1:{port}"))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _reason(info.value) == "WORKER_HOST_NOT_ALLOWED"
    assert len(seen) == before and gw.service.pool.workers() == []


def test_host_allowed():
    from swiftmesh.services.gateway.workers import host_allowed
    allow = ["10.0.0.0/8", "*.workers.svc", "gpu-1:50054", "::1"]
    assert host_allowed("10.2.3.4:50054", allow) and host_allowed("a.workers.svc:1", allow)
    assert host_allowed("GPU-1:50054", allow) and host_allowed("[::1]:5", allow)
    assert not host_allowed("11.0.0.1:1", allow) and not host_allowed("gpu-1:50055", allow)
    assert not host_allowed("evil.svc:1", allow) and not host_allowed("127.0.0.1:1", [])
