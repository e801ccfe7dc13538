"""Secure by default: no unauthenticated server beyond loopback, no silent plaintext with mTLS asked."""

from __future__ import annotations

import pytest

from swiftmesh.runtime.config import ConfigError
from swiftmesh.runtime.server import start_server

from .servers import sleepy_service


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
async def test_an_exposed_bind_without_a_token_refuses_to_start(make_settings, host):
    settings = make_settings(hub={"host": host, "port": 0, "metrics_port": 0})
    with pytest.raises(ConfigError, match="SWIFTMESH_AUTH_TOKEN"):
        await start_server(sleepy_service(settings), settings)


async def test_an_exposed_bind_with_a_token_starts(make_settings):
    settings = make_settings(auth_token="s3cret", hub={"host": "0.0.0.0", "port": 0, "metrics_port": 0})
    running = await start_server(sleepy_service(settings), settings)
    try:
        assert running.port > 0
    finally:
        await running.stop(0)


async def test_require_client_cert_without_certificates_refuses_to_start(make_settings):
    settings = make_settings(tls={"require_client_cert": True})
    with pytest.raises(ConfigError, match="plaintext"):
        await start_server(sleepy_service(settings), settings)


async def test_a_taken_metrics_port_names_the_setting_to_change(make_settings):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = make_settings(hub={"port": 0, "metrics_port": port})
        with pytest.raises(ConfigError, match="SWIFTMESH_TESTHUB__METRICS_PORT.*or 0 to turn"):
            await start_server(sleepy_service(settings), settings)


def test_a_blank_token_does_not_count_as_authentication(make_settings):
    # Settings.load refuses a blank token; a copy made without validation must not pass either.
    from pydantic import SecretStr

    from swiftmesh.runtime.server import check_exposure

    settings = make_settings().model_copy(update={"auth_token": SecretStr("")})
    with pytest.raises(ConfigError, match="SWIFTMESH_AUTH_TOKEN"):
        check_exposure("hub", "0.0.0.0", settings)


@pytest.mark.parametrize("token, warned", [("change-me", "placeholder"), ("short-token", "only 11 characters"),
                                           ("a-long-random-token-0123456789", None)])
async def test_a_placeholder_or_short_token_is_warned_about_at_start(make_settings, caplog, token, warned):
    settings = make_settings(auth_token=token, hub={"port": 0, "metrics_port": 0})
    with caplog.at_level("WARNING", logger="swiftmesh.server"):
        running = await start_server(sleepy_service(settings), settings)
    await running.stop(0)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "AUTH_TOKEN" in r.getMessage()]
    if warned is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warned in warnings[0]
        assert token not in warnings[0] or token == "change-me"


def _grpc_holder():
    """A sync gRPC server on a free loopback port with gRPC's default options (SO_REUSEPORT on),
    like a service already running there. Returns (server, port)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    holder = grpc.server(ThreadPoolExecutor(1))
    port = holder.add_insecure_port("127.0.0.1:0")
    holder.start()
    return holder, port


async def test_a_second_server_on_a_port_in_use_refuses_to_start(make_settings):
    # Before: gRPC's default SO_REUSEPORT let the second server bind beside the first and share its calls.
    holder, port = _grpc_holder()
    try:
        settings = make_settings(hub={"port": port, "metrics_port": 0})
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}.*in use.*SWIFTMESH_TESTHUB__PORT"):
            await start_server(sleepy_service(settings), settings)
    finally:
        holder.stop(0)


def test_serve_on_a_port_in_use_exits_2_naming_the_port(make_settings):
    import subprocess
    import sys

    from swiftmesh.testing.services import child_env

    holder, port = _grpc_holder()
    try:
        env = child_env(make_settings())
        r = subprocess.run([sys.executable, "-m", "swiftmesh.cli.main", "serve", "hub", "--port", str(port)],
                           check=False, env=env, capture_output=True, text=True, timeout=120)
    finally:
        holder.stop(0)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert f"127.0.0.1:{port}" in out and "SWIFTMESH_HUB__PORT" in out and "Traceback" not in out


TOKEN = "a-long-random-token-0123456789"


async def test_an_exposed_gateway_with_an_anonymous_unlimited_api_refuses_to_start(make_settings):
    # Before: the service token passed the check, though it does not guard the OpenAI HTTP API.
    from swiftmesh.runtime.server import Service

    settings = make_settings(auth_token=TOKEN, gateway={"host": "0.0.0.0", "port": 0, "http_port": 0})
    with pytest.raises(ConfigError, match="SWIFTMESH_GATEWAY__REQUIRE_API_KEY.*ANONYMOUS_REQUESTS_PER_MINUTE"):
        await start_server(Service("gateway", endpoint=settings.gateway), settings)


@pytest.mark.parametrize("gateway, refused", [
    ({}, True),
    ({"require_api_key": True}, False),
    ({"anonymous_requests_per_minute": 60}, False),
    ({"allow_anonymous_public": True}, False),
    ({"host": "127.0.0.1"}, False),
])
def test_exposure_of_the_gateway_api(make_settings, gateway, refused):
    from swiftmesh.runtime.server import check_exposure

    settings = make_settings(auth_token=TOKEN, gateway=gateway)
    host = gateway.get("host", "0.0.0.0")
    check_exposure("hub", host, settings)  # the token is enough for the other services
    if refused:
        with pytest.raises(ConfigError, match="ALLOW_ANONYMOUS_PUBLIC"):
            check_exposure("gateway", host, settings)
    else:
        check_exposure("gateway", host, settings)
