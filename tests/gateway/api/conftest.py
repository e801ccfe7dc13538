"""Fixtures of the gateway REST tests: a real engine worker and the gateway, served from a
background event loop so that tests use the synchronous OpenAI SDK (and schemathesis, the CLI)
over real HTTP on loopback.

* ``stack``: in-process workers serving the tiny model (and the tiny model without a chat
  template) + the gateway (session scope).
* ``LoopThread.run(coro)`` runs a coroutine on the servers' loop (pool state, worker status).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest

from swiftmesh.runtime.config import Settings


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopThread:
    """An asyncio loop in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="servers", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 300.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def make_settings(data_dir: Path, **gateway) -> Settings:
    return Settings.load(
        None,
        data_dir=data_dir,
        hub={"port": free_port(), "metrics_port": 0},
        worker={"port": free_port(), "metrics_port": 0},
        gateway={"port": free_port(), "http_port": free_port(), "metrics_port": 0,
                 "health_check_interval_s": 0.5, **gateway},
        shutdown_grace_s=1.0,
    )


@dataclass
class Stack:
    """Servers running on ``loop``: workers and a gateway."""

    settings: Settings
    loop: LoopThread
    gateway_service: object = None
    gateway: object = None
    workers: list = field(default_factory=list)
    model: str = ""
    raw_model: str = ""
    model_dir: Path | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.gateway_service.http_port}"

    @property
    def base_url(self) -> str:
        return f"{self.http}/v1"

    @property
    def pool(self):
        return self.gateway_service.pool

    def client(self, api_key: str = "EMPTY", **kw) -> openai.OpenAI:
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 120.0)
        return openai.OpenAI(base_url=self.base_url, api_key=api_key, **kw)

    def run(self, coro, timeout: float = 300.0):
        return self.loop.run(coro, timeout)


def start_stack(tmp: Path, workers: list[dict], **gateway) -> Stack:
    """Workers (each a dict of ``settings.worker`` fields: ``model`` ...) served in-process by
    the real engine worker (``worker_server.create_service``), and a gateway in front of them."""
    from swiftmesh.services.gateway.server import create_service
    from swiftmesh.services.gateway.worker_server import create_service as create_worker

    from swiftmesh.runtime.server import start_server

    loop = LoopThread()
    ports = [free_port() for _ in workers]
    settings = make_settings(tmp / "data", workers=[f"127.0.0.1:{p}" for p in ports], **gateway)
    stack = Stack(settings, loop)

    async def loaded(running) -> None:
        """Wait for a worker's start-up load (one at a time: transformers model loading is not
        thread-safe within one process, and production runs one worker per process)."""
        from swiftmesh.clients.gateway import WorkerClient

        deadline = loop.loop.time() + 120
        async with WorkerClient(settings, running.target) as w:
            while True:
                status = await w.status(timeout=5)
                if status.ready and status.models:
                    return
                assert loop.loop.time() < deadline, f"worker {running.target} did not load its model"
                await asyncio.sleep(0.05)

    for port, fields in zip(ports, workers):
        worker = settings.worker.model_copy(update={"port": port, "device": "cpu", **fields})
        ws = settings.model_copy(update={"worker": worker})
        running = loop.run(start_server(create_worker(ws), ws))
        stack.workers.append(running)
        loop.run(loaded(running))
    stack.gateway_service = create_service(settings)
    stack.gateway = loop.run(start_server(stack.gateway_service, settings))
    return stack


def start_extra_gateway(stack: Stack, tmp: Path, **settings_overrides) -> Stack:
    """Another gateway on ``stack``'s loop and workers, with other settings (auth, limits)."""
    from swiftmesh.services.gateway.server import create_service

    from swiftmesh.runtime.server import start_server

    gateway = {k: v for k, v in settings_overrides.pop("gateway", {}).items()}
    settings = Settings.load(
        None,
        data_dir=tmp,
        gateway={"port": free_port(), "http_port": free_port(), "metrics_port": 0, "health_check_interval_s": 0.5,
                 "workers": list(stack.settings.gateway.workers), **gateway},
        shutdown_grace_s=1.0,
        **settings_overrides,
    )
    other = Stack(settings, stack.loop, model=stack.model, raw_model=stack.raw_model, model_dir=stack.model_dir)
    other.gateway_service = create_service(settings)
    other.gateway = stack.run(start_server(other.gateway_service, settings))
    return other


def stop_stack(stack: Stack) -> None:
    try:
        if stack.gateway is not None:
            stack.run(stack.gateway.stop(0.5), 60)
        for w in stack.workers:
            stack.run(w.stop(0.5), 60)
    finally:
        stack.loop.close()


@pytest.fixture(scope="session")
def tiny_raw_model_dir(tmp_path_factory) -> Path:
    """The tiny model without a chat template (its tokenizer has none)."""
    from swiftmesh.testing.tiny import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-raw") / "tiny-raw", chat_template=False)


@pytest.fixture(scope="session")
def stack(tmp_path_factory, tiny_model_dir, tiny_raw_model_dir) -> Stack:
    """The gateway with two in-process workers: the tiny model (``stack.model``) and the tiny
    model without a chat template (``stack.raw_model``)."""
    s = start_stack(tmp_path_factory.mktemp("gw"), [{"model": str(tiny_model_dir)}, {"model": str(tiny_raw_model_dir)}])
    s.model = tiny_model_dir.name
    s.model_dir = tiny_model_dir
    s.raw_model = tiny_raw_model_dir.name
    yield s
    stop_stack(s)
