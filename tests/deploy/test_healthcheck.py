"""deploy/docker/healthcheck.py, the containers' HEALTHCHECK (`swiftmesh-healthcheck <svc>`),
against real gRPC servers of the runtime: healthy, draining (NOT_SERVING), down, and for the
gateway the REST facade's /health too. The port comes from the same settings the service reads."""

from __future__ import annotations

import asyncio
import http.server
import os
import sys
import threading

import pytest

from swiftmesh.hub.v1 import hub_pb2_grpc
from swiftmesh.runtime.placeholder import unimplemented
from swiftmesh.runtime.server import Service, start_server

from .checks import DOCKER

SCRIPT = DOCKER / "healthcheck.py"
TOKEN = "hc-token-0123456789"


async def healthcheck(svc: str, **env: str) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SWIFTMESH_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), svc, env={**base, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode()


async def start(settings, svc: str):
    service = Service(svc, endpoint=settings.endpoint(svc))
    service.add(unimplemented(hub_pb2_grpc.HubServiceServicer, "swiftmesh.hub.v1.HubService"),
                hub_pb2_grpc.add_HubServiceServicer_to_server, "swiftmesh.hub.v1.HubService")
    return await start_server(service, settings)


async def test_healthy_draining_and_down(make_settings):
    settings = make_settings(auth_token=TOKEN)
    running = await start(settings, "trainer")
    env = {"SWIFTMESH_TRAINER__PORT": str(running.port), "SWIFTMESH_AUTH_TOKEN": TOKEN}
    try:
        code, out = await healthcheck("trainer", **env)
        assert code == 0 and "SERVING" in out, out
        # Another port: nothing there.
        code, out = await healthcheck("trainer", **{**env, "SWIFTMESH_TRAINER__PORT": str(settings.hub.port)})
        assert code == 1 and "UNREACHABLE" in out, out
        await running.service.health.set_all(False)
        code, out = await healthcheck("trainer", **env)
        assert code == 1 and "NOT_SERVING" in out, out
    finally:
        await running.stop(0)
    code, out = await healthcheck("trainer", **env)
    assert code == 1 and "UNREACHABLE" in out, out


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/health"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}' if ok else b"")

    def log_message(self, *args):
        pass


async def test_gateway_needs_its_http_health_too(make_settings):
    settings = make_settings()
    running = await start(settings, "gateway")
    env = {"SWIFTMESH_GATEWAY__PORT": str(running.port), "SWIFTMESH_GATEWAY__HTTP_PORT": str(settings.gateway.http_port)}
    try:
        code, out = await healthcheck("gateway", **env)
        assert code == 1 and f":{settings.gateway.http_port}/health" in out, out
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", settings.gateway.http_port), _Health)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            code, out = await healthcheck("gateway", **env)
            assert code == 0, out
        finally:
            httpd.shutdown()
            httpd.server_close()
    finally:
        await running.stop(0)


@pytest.mark.parametrize("args", [[], ["nosuch"]])
async def test_usage(args):
    proc = await asyncio.create_subprocess_exec(sys.executable, str(SCRIPT), *args,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2 and b"usage" in err


async def test_bad_settings_fail_cleanly():
    code, out = await healthcheck("hub", SWIFTMESH_HUB__PORT="not-a-port")
    assert code == 1 and "hub.port" in out, out
