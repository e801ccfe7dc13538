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


async def test_under_mutual_tls_with_the_mounted_certificates(make_settings, tmp_path):
    """A server that requires client certificates, whose certificate names only its service
    (``hub``, ``hub.swiftmesh.svc``: not 127.0.0.1, as a production certificate): the check with
    the container's TLS variables verifies it against the host of the service's address and
    passes; without a client certificate, or dialled by 127.0.0.1's name, it fails and says what
    it dialled with."""
    from swiftmesh.runtime.certs import make_dev_pki

    pki = make_dev_pki(tmp_path / "pki", ["hub"], hosts=["hub.swiftmesh.svc"])
    tls = {"enabled": True, "require_client_cert": True, "ca_file": pki["ca"].cert, "cert_file": pki["hub"].cert,
           "key_file": pki["hub"].key}
    settings = make_settings(auth_token=TOKEN, tls=tls)
    running = await start(settings, "hub")
    env = {"SWIFTMESH_HUB__PORT": str(running.port), "SWIFTMESH_HUB__ADDRESS": f"hub:{running.port}",
           "SWIFTMESH_AUTH_TOKEN": TOKEN, "SWIFTMESH_TLS__ENABLED": "true", "SWIFTMESH_TLS__REQUIRE_CLIENT_CERT": "true",
           "SWIFTMESH_TLS__CA_FILE": str(pki["ca"].cert), "SWIFTMESH_TLS__CERT_FILE": str(pki["hub"].cert),
           "SWIFTMESH_TLS__KEY_FILE": str(pki["hub"].key)}
    try:
        code, out = await healthcheck("hub", **env)
        assert code == 0 and "SERVING" in out, out
        no_cert = {k: v for k, v in env.items() if k not in ("SWIFTMESH_TLS__CERT_FILE", "SWIFTMESH_TLS__KEY_FILE")}
        code, out = await healthcheck("hub", **no_cert)
        assert code == 1 and "UNREACHABLE" in out and "client certificate none" in out, out
        assert "SWIFTMESH_TLS__CERT_FILE" in out
        no_address = {k: v for k, v in env.items() if k != "SWIFTMESH_HUB__ADDRESS"}
        code, out = await healthcheck("hub", **no_address)
        assert code == 1 and "server name 127.0.0.1" in out, out
        code, out = await healthcheck("hub", **no_address, SWIFTMESH_TLS__SERVER_NAME="hub.swiftmesh.svc")
        assert code == 0, out
    finally:
        await running.stop(0)
