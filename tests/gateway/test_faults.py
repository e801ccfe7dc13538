"""Issue 14, restarts lose nothing (separate processes, SIGKILL): a gateway killed mid-stream and
a worker killed mid-request give the client a clean error, not a hang, and after a restart the
gateway routes to its workers again (the gateway re-reads them from its database; it was given
the worker by RegisterWorker, not by configuration)."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from swiftmesh.clients.gateway import GatewayClient, WorkerClient
from swiftmesh.testing.services import ServiceProcess, run_sync, settings_for

#: Longest a client may wait for its stream to end once the other side died, seconds.
CLEAN_END_S = 15.0


def _worker(tmp, tiny_model_dir, port: int | None = None) -> ServiceProcess:
    worker = {"model": str(tiny_model_dir), "device": "cpu", **({"port": port} if port else {})}
    settings = settings_for(tmp, worker=worker, telemetry={"log_level": "WARNING"})
    return ServiceProcess("worker", settings, env={"OMP_NUM_THREADS": "1"}).start()


@pytest.fixture(scope="module")
def procs(tmp_path_factory, tiny_model_dir):
    worker = _worker(tmp_path_factory.mktemp("worker"), tiny_model_dir)
    settings = settings_for(tmp_path_factory.mktemp("gw"), gateway={"health_check_interval_s": 0.5},
                            telemetry={"log_level": "WARNING"})
    gateway = ServiceProcess("gateway", settings).start()
    with worker, gateway:
        worker.wait_ready(180)
        gateway.wait_ready(120)
        run_sync(_register(gateway, worker.target))
        _wait_routable(gateway, tiny_model_dir.name)
        yield gateway, worker


async def _register(gw: ServiceProcess, address: str) -> None:
    async with GatewayClient(gw.settings) as c:
        await c.register_worker(address)


def _wait_routable(gw: ServiceProcess, model: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(f"{gw.http_url}/v1/models", timeout=5)
            if r.status_code == 200 and any(m["id"] == model for m in r.json()["data"]):
                return
            last = f"{r.status_code} {r.text}"
        except httpx.HTTPError as e:
            last = repr(e)
        assert time.monotonic() < deadline, f"{model} never listed by {gw.http_url}: {last}"
        time.sleep(0.3)


def _chat(gw: ServiceProcess, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return httpx.post(f"{gw.http_url}/v1/chat/completions", json=body, timeout=60)


def _long_stream(gw: ServiceProcess, model: str):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 900,
            "ignore_eos": True, "stream": True}
    return httpx.stream("POST", f"{gw.http_url}/v1/chat/completions", json=body,
                        timeout=httpx.Timeout(CLEAN_END_S * 2, connect=5))


def _running(worker: ServiceProcess) -> int:
    async def status():
        async with WorkerClient(worker.settings, worker.target) as w:
            st = await w.status(timeout=5.0)
            return st.running + st.waiting
    return run_sync(status())


def test_gateway_killed_mid_stream(procs, tiny_model_dir):
    gateway, worker = procs
    model = tiny_model_dir.name
    with _long_stream(gateway, model) as r:
        assert r.status_code == 200, r.read()
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: {"))  # generating
        gateway.kill()  # SIGKILL mid-stream
        start = time.monotonic()
        with pytest.raises(httpx.TransportError) as e:
            for _ in lines:
                pass
        assert not isinstance(e.value, httpx.TimeoutException), "the client waited for a dead gateway"
        assert time.monotonic() - start < CLEAN_END_S
    # The worker stops generating for the dead gateway (its gRPC stream was cancelled).
    deadline = time.monotonic() + 30
    while _running(worker) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert _running(worker) == 0
    # Restarted, the gateway re-reads the registered worker from its database and routes to it.
    gateway.start().wait_ready(120)
    _wait_routable(gateway, model)
    r = _chat(gateway, model)
    assert r.status_code == 200, r.text


def test_worker_killed_mid_stream(procs, tiny_model_dir):
    gateway, worker = procs
    model = tiny_model_dir.name
    _wait_routable(gateway, model)
    events: list[str] = []
    with _long_stream(gateway, model) as r:
        assert r.status_code == 200, r.read()
        lines = r.iter_lines()
        events.append(next(line for line in lines if line.startswith("data: {")))
        worker.kill()  # SIGKILL mid-request
        start = time.monotonic()
        events.extend(line for line in lines if line.startswith("data: "))  # ends, no hang
        assert time.monotonic() - start < CLEAN_END_S
    # The stream ends with an OpenAI error event, then [DONE].
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["message"] and error["type"], error
    # With the worker gone: a clean 503 in OpenAI's envelope.
    r = _chat(gateway, model)
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_healthy_worker", r.text
    # The worker restarts on its address: the gateway routes to it again.
    worker.start().wait_ready(180)
    _wait_routable(gateway, model)
    r = _chat(gateway, model)
    assert r.status_code == 200, r.text


def test_http_port_in_use_exits_2_naming_the_setting(tmp_path):
    """Security finding 3: a taken HTTP port was uvicorn's [Errno 98] and then a segfault (rc 139):
    uvicorn's sys.exit left its task and the event loop without stopping the gRPC server."""
    import socket
    import subprocess
    import sys

    from swiftmesh.testing.services import child_env

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        settings = settings_for(tmp_path, gateway={"http_port": port}, telemetry={"log_level": "WARNING"})
        done = subprocess.run([sys.executable, "-m", "swiftmesh.cli.main", "serve", "gateway"],
                              env=child_env(settings), capture_output=True, text=True, timeout=120, check=False)
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, out[-2000:]
    assert "SWIFTMESH_GATEWAY__HTTP_PORT" in out and str(port) in out
