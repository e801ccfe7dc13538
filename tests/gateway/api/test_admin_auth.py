"""Issue 13: every admin action (gRPC GatewayService, /v1/admin/* over HTTP) needs the service
token or an admin API key; a gateway with neither configured admits loopback callers only."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest

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
