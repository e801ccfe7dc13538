"""Routing over workers: client disconnects abort the engine request; a worker killed during
load is taken out of rotation (requests go to the other worker, or 503 when none is left), and
comes back when it is healthy again."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import openai
import pytest
from prometheus_client import REGISTRY

from swiftmesh.testing.services import free_ports
from tests.gateway.api.conftest import start_extra_gateway, worker_process

MESSAGES = [{"role": "user", "content": "Tell me a long story."}]


def _metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _wait(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def test_client_disconnect_aborts_the_engine_request(stack):
    worker = stack.pool.workers()[0]

    def status():
        stack.run(stack.pool.refresh(worker))
        return worker.running

    assert status() == 0
    aborted = _metric("swiftmesh_worker_requests_total", model=stack.model, finish_reason="abort")
    client = stack.client()
    stream = client.chat.completions.create(model=stack.model, messages=MESSAGES, max_tokens=900, stream=True,
                                            extra_body={"ignore_eos": True})
    got = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            got += 1
            if got >= 3:
                break
    assert status() == 1  # generating
    stream.close()  # the client goes away mid-stream
    _wait(lambda: status() == 0, 60, "the worker's running count to drop")
    _wait(lambda: _metric("swiftmesh_worker_requests_total", model=stack.model, finish_reason="abort") == aborted + 1,
          30, "the engine to record the abort")
    assert worker.inflight == 0
    # And the worker serves the next request.
    r = client.chat.completions.create(model=stack.model, messages=MESSAGES, max_tokens=2)
    assert r.usage.completion_tokens >= 1


def test_non_streamed_disconnect_aborts_too(stack):
    worker = stack.pool.workers()[0]
    aborted = _metric("swiftmesh_worker_requests_total", model=stack.model, finish_reason="abort")
    body = {"model": stack.model, "messages": MESSAGES, "max_tokens": 900, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{stack.base_url}/chat/completions", json=body, timeout=httpx.Timeout(1.0, connect=5.0))

    def idle():
        stack.run(stack.pool.refresh(worker))
        return worker.running == 0 and worker.inflight == 0

    _wait(idle, 60, "the worker to be idle")
    _wait(lambda: _metric("swiftmesh_worker_requests_total", model=stack.model, finish_reason="abort") == aborted + 1,
          30, "the engine to record the abort")


@pytest.fixture
def two_workers(stack, tmp_path):
    """Two worker processes serving the stack's model, and a gateway in front of both."""
    ports = free_ports(2)
    procs = [worker_process(stack, port, tmp_path / f"w{i}.log") for i, port in enumerate(ports)]
    try:
        for proc in procs:
            proc.wait_ready()
        gw = start_extra_gateway(stack, tmp_path / "gw", gateway={"workers": [f"127.0.0.1:{p}" for p in ports]})
        yield gw, ports, procs
        stack.run(gw.gateway.stop(0.5))
    finally:
        for p in procs:
            p.kill()


def test_worker_killed_during_load_fails_over_then_503_then_recovers(stack, two_workers, tmp_path):
    gw, ports, procs = two_workers
    addresses = [f"127.0.0.1:{p}" for p in ports]
    client = gw.client()
    assert all(w.healthy for w in gw.pool.workers())

    def started(address: str) -> float:
        return _metric("swiftmesh_gateway_worker_generations_total", worker=address, outcome="started")

    def one(i: int) -> str:
        r = client.chat.completions.create(model=gw.model, messages=[{"role": "user", "content": f"hi {i}"}],
                                           max_tokens=24, extra_body={"ignore_eos": True})
        return r.choices[0].finish_reason

    before = [started(a) for a in addresses]
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        futures = [ex.submit(one, i) for i in range(48)]
        _wait(lambda: all(started(a) > b for a, b in zip(addresses, before)), 60, "both workers to get requests")
        procs[0].kill()  # dies with requests in flight
        results = [f.result() for f in futures]
    # Every request finished: those that had not started on the dead worker went to the other.
    assert results == ["length"] * 48
    dead = next(w for w in gw.pool.workers() if w.address == addresses[0])
    assert not dead.healthy
    assert started(addresses[1]) > before[1]
    # New requests go to the live worker only.
    after = started(addresses[0])
    assert [one(i) for i in range(3)] == ["length"] * 3
    assert started(addresses[0]) == after

    # With no worker left: 503 with Retry-After, in OpenAI's envelope.
    procs[1].kill()
    with pytest.raises(openai.APIStatusError) as e:
        one(0)
    assert e.value.status_code == 503
    assert e.value.response.json()["error"]["code"] == "no_healthy_worker"
    assert int(e.value.response.headers["retry-after"]) >= 1
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model=gw.model, messages=MESSAGES, stream=True)
    assert e.value.status_code == 503

    # A worker comes back on its address: it rejoins the rotation and requests succeed.
    procs[0] = worker_process(stack, ports[0], tmp_path / "w0-restart.log").wait_ready()
    _wait(lambda: next(w for w in gw.pool.workers() if w.address == addresses[0]).healthy, 60,
          "the restarted worker to rejoin")
    assert one(0) == "length"
    assert started(addresses[0]) > after


def test_register_and_deregister_workers_through_grpc(stack, tmp_path):
    """GatewayService.RegisterWorker / ListWorkers / DeregisterWorker on a gateway with no workers."""
    from swiftmesh.clients.gateway import GatewayClient

    gw = start_extra_gateway(stack, tmp_path / "gw", gateway={"workers": []})
    try:
        client = gw.client()
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=gw.model, messages=MESSAGES, max_tokens=1)
        address = stack.settings.gateway.workers[0]

        async def register():
            async with GatewayClient(gw.settings) as c:
                w = await c.register_worker(address)
                again = await c.register_worker(address)  # idempotent
                return w, again, await c.list_workers()

        w, again, listed = gw.run(register())
        assert w.healthy and w.address == address and gw.model in w.models
        assert again.name == w.name and [x.name for x in listed] == [w.name]
        assert client.chat.completions.create(model=gw.model, messages=MESSAGES, max_tokens=1).usage

        async def deregister():
            async with GatewayClient(gw.settings) as c:
                await c.deregister_worker(w.name)
                return await c.list_workers()

        assert gw.run(deregister()) == []
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=gw.model, messages=MESSAGES, max_tokens=1)
    finally:
        stack.run(gw.gateway.stop(0.5))
