"""The shared gRPC runtime: health, drain on SIGTERM, deadlines, auth, mutual TLS, error
details, retries, tracing and metrics — on real servers over loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from swiftmesh.hub.v1 import hub_pb2, hub_pb2_grpc
from swiftmesh.runtime.client import channel, domain_error
from swiftmesh.runtime.errors import InvalidArgument
from swiftmesh.runtime.health import check
from swiftmesh.runtime.server import start_server
from swiftmesh.testing.services import ServiceProcess

from .servers import SERVICE_NAME, sleepy_service

HERE = Path(__file__).resolve().parent


async def _get(settings, target, name, **kw):
    async with channel(target, settings) as ch:
        return await hub_pb2_grpc.HubServiceStub(ch).GetModel(hub_pb2.GetModelRequest(name=name), **kw)


async def test_health_reports_serving_per_service_and_overall(make_settings):
    settings = make_settings()
    running = await start_server(sleepy_service(settings), settings)
    try:
        assert await check(running.target, settings) == "SERVING"
        assert await check(running.target, settings, SERVICE_NAME) == "SERVING"
        assert await check(running.target, settings, "no.such.Service") == "SERVICE_UNKNOWN"
        await running.service.health.set(SERVICE_NAME, False)
        assert await check(running.target, settings, SERVICE_NAME) == "NOT_SERVING"
        assert await check(running.target, settings) == "NOT_SERVING"
    finally:
        await running.stop(0)
    assert await check(running.target, settings, timeout=1) == "UNREACHABLE"


async def test_reflection_lists_the_services(make_settings):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    settings = make_settings()
    running = await start_server(sleepy_service(settings), settings)
    try:
        async with channel(running.target, settings) as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            names = []
            async for resp in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
                names = [s.name for s in resp.list_services_response.service]
        assert SERVICE_NAME in names and "grpc.health.v1.Health" in names
    finally:
        await running.stop(0)


def test_sigterm_drains_in_flight_calls_and_refuses_new_ones(make_settings):
    """A call in flight when SIGTERM arrives completes within the grace period; new calls are refused."""
    settings = make_settings(shutdown_grace_s=5)
    proc = ServiceProcess("hub", settings, argv=[sys.executable, "-m", "tests.foundation.servers"], new_session=False)
    try:
        proc.wait_ready(60)
        target = proc.target

        async def scenario():
            in_flight = asyncio.ensure_future(_get(settings, target, "models/sleep-2"))
            await asyncio.sleep(0.5)  # the call is being handled now
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)  # the server is draining
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async with channel(target, settings, retries=False) as ch:
                    await hub_pb2_grpc.HubServiceStub(ch).GetModel(hub_pb2.GetModelRequest(name="models/x"), timeout=3)
            started = time.monotonic()
            model = await in_flight
            return model, refused.value.code(), time.monotonic() - started

        model, refused_code, waited = asyncio.run(scenario())
        assert model.name == "models/sleep-2"  # completed, not cancelled
        assert refused_code == grpc.StatusCode.UNAVAILABLE
        assert waited < 5
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()


async def test_grace_period_cancels_calls_that_run_too_long(make_settings):
    settings = make_settings()
    running = await start_server(sleepy_service(settings), settings)
    call = asyncio.ensure_future(_get(settings, running.target, "models/sleep-30"))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await running.stop(grace=0.5)
    assert time.monotonic() - started < 5
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


async def test_deadline_shorter_than_the_work_gives_deadline_exceeded(make_settings):
    settings = make_settings(rpc_timeout_s=0.3)
    running = await start_server(sleepy_service(settings), settings)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as e:  # the default deadline from the settings
            await _get(settings, running.target, "models/sleep-2")
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(grpc.aio.AioRpcError) as e:  # an explicit one
            await _get(make_settings(), running.target, "models/sleep-2", timeout=0.2)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert (await _get(settings, running.target, "models/sleep-0.01")).name == "models/sleep-0.01"
    finally:
        await running.stop(0)


async def test_auth_token_required(make_settings):
    server_settings = make_settings(auth_token="s3cret")
    running = await start_server(sleepy_service(server_settings), server_settings)
    try:
        for token, reason in ((None, "MISSING_CREDENTIALS"), ("wrong", "INVALID_CREDENTIALS")):
            client = make_settings(auth_token=token)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await _get(client, running.target, "models/a")
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert domain_error(e.value).reason == reason
        assert (await _get(make_settings(auth_token="s3cret"), running.target, "models/a")).name == "models/a"
        # health stays open for probes
        assert await check(running.target, make_settings()) == "SERVING"
    finally:
        await running.stop(0)


async def test_domain_errors_carry_google_rpc_details(make_settings):
    settings = make_settings()
    running = await start_server(sleepy_service(settings), settings)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await _get(settings, running.target, "models/bad")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        err = domain_error(e.value)
        assert isinstance(err, InvalidArgument)
        assert err.reason == "BAD_NAME" and err.message == "model name is bad"
        assert [(v.field, v.description) for v in err.field_violations] == [("name", "must not be 'bad'")]
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await _get(settings, running.target, "models/boom")
        assert e.value.code() == grpc.StatusCode.INTERNAL
        assert "kaboom" in e.value.details()
        # the server keeps working
        assert (await _get(settings, running.target, "models/ok")).name == "models/ok"
    finally:
        await running.stop(0)


async def test_client_retries_unavailable_through_the_service_config(make_settings):
    settings = make_settings()
    service = sleepy_service(settings)
    running = await start_server(service, settings)
    try:
        model = await _get(settings, running.target, "models/flaky-2")
        assert model.size_bytes == 3  # two UNAVAILABLE answers, then success, with no caller code
        async with channel(running.target, settings, retries=False) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await hub_pb2_grpc.HubServiceStub(ch).GetModel(hub_pb2.GetModelRequest(name="models/flaky-1"))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.stop(0)


def _certs(tmp_path):
    trustme = pytest.importorskip("trustme", reason="trustme (dev extra) makes the test certificates")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client.swiftmesh.test")
    paths = {}
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    for name in ("ca.pem", "server.key", "server.pem", "client.key", "client.pem"):
        paths[name] = tmp_path / name
    return paths


async def test_mutual_tls(make_settings, tmp_path):
    c = _certs(tmp_path)
    server_settings = make_settings(
        tls={"enabled": True, "cert_file": c["server.pem"], "key_file": c["server.key"], "ca_file": c["ca.pem"],
             "require_client_cert": True}
    )
    running = await start_server(sleepy_service(server_settings), server_settings)
    try:
        with_cert = make_settings(
            tls={"enabled": True, "ca_file": c["ca.pem"], "cert_file": c["client.pem"], "key_file": c["client.key"]}
        )
        assert (await _get(with_cert, running.target, "models/a")).name == "models/a"
        without_cert = make_settings(tls={"enabled": True, "ca_file": c["ca.pem"]})
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async with channel(running.target, without_cert, retries=False) as ch:
                await hub_pb2_grpc.HubServiceStub(ch).GetModel(hub_pb2.GetModelRequest(name="models/a"), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        plaintext = make_settings()
        with pytest.raises(grpc.aio.AioRpcError):
            async with channel(running.target, plaintext, retries=False) as ch:
                await hub_pb2_grpc.HubServiceStub(ch).GetModel(hub_pb2.GetModelRequest(name="models/a"), timeout=5)
    finally:
        await running.stop(0)


async def test_client_and_server_spans_share_one_trace(make_settings):
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from swiftmesh.runtime.telemetry import add_span_processor

    exporter = InMemorySpanExporter()
    add_span_processor(SimpleSpanProcessor(exporter))
    settings = make_settings()
    running = await start_server(sleepy_service(settings), settings)
    try:
        with trace.get_tracer("test").start_as_current_span("caller") as caller:
            await _get(settings, running.target, "models/traced")
        trace_id = caller.get_span_context().trace_id
    finally:
        await running.stop(0)
    spans = [s for s in exporter.get_finished_spans() if s.name.endswith("HubService/GetModel")]
    kinds = {s.kind.name: s for s in spans if s.context.trace_id == trace_id}
    assert set(kinds) == {"CLIENT", "SERVER"}, [(s.name, s.kind, s.context.trace_id) for s in spans]
    assert kinds["SERVER"].parent.span_id == kinds["CLIENT"].context.span_id


async def test_prometheus_metrics_endpoint(make_settings, free_port):
    port = free_port()
    settings = make_settings(hub={"metrics_port": port})
    running = await start_server(sleepy_service(settings), settings)
    try:
        await _get(settings, running.target, "models/m")
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        line = next(
            ln for ln in text.splitlines()
            if ln.startswith("swiftmesh_grpc_server_handled_total{") and 'service="testhub"' in ln
            and 'grpc_method="GetModel"' in ln and 'grpc_code="OK"' in ln
        )
        assert float(line.rsplit(" ", 1)[1]) >= 1
    finally:
        await running.stop(0)


def test_bad_tls_settings_are_refused(make_settings):
    from swiftmesh.runtime.config import ConfigError
    from swiftmesh.runtime.server import server_credentials

    with pytest.raises(ConfigError, match="key_file"):
        server_credentials(make_settings(tls={"enabled": True, "cert_file": "/nonexistent.pem"}))


def test_services_module_runs_standalone():
    """`python -m tests.foundation.servers` is importable without side effects (used by the SIGTERM test)."""
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-c", "import tests.foundation.servers"], cwd=HERE.parents[1], env=env)
    assert r.returncode == 0
