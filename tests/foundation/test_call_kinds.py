"""The shared client factory on all four RPC kinds, against a real server with a token:
credentials and deadlines reach unary and streamed calls alike, and a refused stream ends
UNAUTHENTICATED at once (not UNKNOWN, not retried)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from swiftmesh.runtime.client import channel, domain_error
from swiftmesh.runtime.server import Service, start_server

SERVICE = "swiftmesh.test.v1.Echo"


class Echo:
    """Counts the calls that reach the behaviour (a refused call never does)."""

    def __init__(self) -> None:
        self.calls = 0
        self.deadlines: list[float | None] = []

    def _seen(self, context) -> None:
        self.calls += 1
        self.deadlines.append(context.time_remaining())

    async def unary_unary(self, request: bytes, context) -> bytes:
        self._seen(context)
        return request

    async def unary_stream(self, request: bytes, context):
        self._seen(context)
        for _ in range(3):
            yield request

    async def stream_unary(self, requests, context) -> bytes:
        self._seen(context)
        return b"".join([r async for r in requests])

    async def stream_stream(self, requests, context):
        self._seen(context)
        async for r in requests:
            yield r


def _add(echo: Echo, server: grpc.aio.Server) -> None:
    handlers = {
        "UnaryUnary": grpc.unary_unary_rpc_method_handler(echo.unary_unary),
        "UnaryStream": grpc.unary_stream_rpc_method_handler(echo.unary_stream),
        "StreamUnary": grpc.stream_unary_rpc_method_handler(echo.stream_unary),
        "StreamStream": grpc.stream_stream_rpc_method_handler(echo.stream_stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


async def _four_calls(ch: grpc.aio.Channel) -> list:
    async def chunks():
        yield b"a"
        yield b"b"

    out = [await ch.unary_unary(f"/{SERVICE}/UnaryUnary")(b"x")]
    out.append([r async for r in ch.unary_stream(f"/{SERVICE}/UnaryStream")(b"y")])
    out.append(await ch.stream_unary(f"/{SERVICE}/StreamUnary")(chunks()))
    out.append([r async for r in ch.stream_stream(f"/{SERVICE}/StreamStream")(chunks())])
    return out


@pytest.fixture
async def echo_server(make_settings):
    settings = make_settings(auth_token="s3cret")
    echo = Echo()
    service = Service("echo", endpoint=settings.hub)
    service.add(echo, _add, SERVICE)
    running = await start_server(service, settings)
    yield echo, running
    await running.stop(0)


async def test_token_and_deadline_on_all_four_kinds(echo_server, make_settings):
    echo, running = echo_server
    async with channel(running.target, make_settings(auth_token="s3cret", rpc_timeout_s=7)) as ch:
        assert await _four_calls(ch) == [b"x", [b"y"] * 3, b"ab", [b"a", b"b"]]
    assert echo.calls == 4
    unary_unary, unary_stream, stream_unary, stream_stream = echo.deadlines
    assert 0 < unary_unary <= 7.5 and 0 < stream_unary <= 7.5  # rpc_timeout_s for unary responses
    assert unary_stream > 3600 and stream_stream > 3600  # the stream deadline for streamed ones


@pytest.mark.parametrize("token", [None, "wrong"])
async def test_refused_calls_of_every_kind_are_unauthenticated_and_not_retried(echo_server, make_settings, token):
    echo, running = echo_server
    async with channel(running.target, make_settings(auth_token=token)) as ch:
        for call in (
            lambda: ch.unary_unary(f"/{SERVICE}/UnaryUnary")(b"x"),
            lambda: _drain(ch.unary_stream(f"/{SERVICE}/UnaryStream")(b"y")),
            lambda: ch.stream_unary(f"/{SERVICE}/StreamUnary")(_one()),
            lambda: _drain(ch.stream_stream(f"/{SERVICE}/StreamStream")(_one())),
        ):
            start = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call()
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, e.value
            assert domain_error(e.value).reason in ("MISSING_CREDENTIALS", "INVALID_CREDENTIALS")
            assert time.monotonic() - start < 1.0  # five retries with backoff would take > 1 s
    assert echo.calls == 0


async def _one():
    yield b"z"
    await asyncio.sleep(0)


async def _drain(call) -> list:
    return [r async for r in call]


async def test_the_token_goes_only_where_asked(echo_server, make_settings):
    """A channel made with ``send_token=False`` (a peer a request named) carries no token."""
    _echo, running = echo_server
    settings = make_settings(auth_token="s3cret")
    assert running.target not in settings.configured_peers()
    assert settings.hub.target in settings.configured_peers()
    assert running.target in make_settings(trusted_peers=[running.target]).configured_peers()
    async with channel(running.target, settings, send_token=False) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await ch.unary_unary(f"/{SERVICE}/UnaryUnary")(b"x")
    assert domain_error(e.value).reason == "MISSING_CREDENTIALS"


async def test_refused_calls_are_counted_and_logged(echo_server, make_settings, caplog):
    """The access log and swiftmesh_grpc_server_handled_total see a refused call with its code (the
    status interceptor sits outside auth), one per attempt, for unary and streamed calls."""
    import logging

    from swiftmesh.runtime.interceptors import RPC_HANDLED

    def count(method: str) -> float:
        return RPC_HANDLED.labels("echo", SERVICE, method, "UNAUTHENTICATED")._value.get()

    echo, running = echo_server
    before = {m: count(m) for m in ("UnaryUnary", "UnaryStream")}
    with caplog.at_level(logging.INFO, logger="swiftmesh.access"):
        async with channel(running.target, make_settings(auth_token="wrong")) as ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await ch.unary_unary(f"/{SERVICE}/UnaryUnary")(b"x")
            with pytest.raises(grpc.aio.AioRpcError):
                await _drain(ch.unary_stream(f"/{SERVICE}/UnaryStream")(b"y"))
    assert {m: count(m) - before[m] for m in before} == {"UnaryUnary": 1, "UnaryStream": 1}
    logged = [r.getMessage() for r in caplog.records if r.name == "swiftmesh.access"]
    assert any("UnaryUnary UNAUTHENTICATED" in m for m in logged), logged
    assert echo.calls == 0
