"""Fixtures of the gateway REST tests: a real engine worker and the gateway, served from a
background event loop so that tests use the synchronous OpenAI SDK (and schemathesis, the CLI)
over real HTTP on loopback.

* ``stack``: one in-process worker serving the tiny model + the gateway (module scope).
* ``LoopThread.run(coro)`` runs a coroutine on the servers' loop (pool state, worker status).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
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


WorkerFactory = Callable[[Settings, Path], object]


def start_stack(tmp: Path, worker_factory, n_workers: int = 1, **gateway) -> Stack:
    from swiftmesh.runtime.server import start_server
    from swiftmesh.services.gateway.server import create_service

    loop = LoopThread()
    ports = [free_port() for _ in range(n_workers)]
    settings = make_settings(tmp / "data", workers=[f"127.0.0.1:{p}" for p in ports], **gateway)
    stack = Stack(settings, loop)
    for p in ports:
        ws = settings.model_copy(update={"worker": settings.worker.model_copy(update={"port": p})})
        service = worker_factory(ws)
        stack.workers.append(loop.run(start_server(service, ws)))
    stack.gateway_service = create_service(settings)
    stack.gateway = loop.run(start_server(stack.gateway_service, settings))
    return stack


def start_extra_gateway(stack: Stack, tmp: Path, **settings_overrides) -> Stack:
    """Another gateway on ``stack``'s loop and workers, with other settings (auth, limits)."""
    from swiftmesh.runtime.server import start_server
    from swiftmesh.services.gateway.server import create_service

    gateway = {k: v for k, v in settings_overrides.pop("gateway", {}).items()}
    settings = Settings.load(
        None,
        data_dir=tmp,
        gateway={"port": free_port(), "http_port": free_port(), "metrics_port": 0, "health_check_interval_s": 0.5,
                 "workers": list(stack.settings.gateway.workers), **gateway},
        shutdown_grace_s=1.0,
        **settings_overrides,
    )
    other = Stack(settings, stack.loop, model=stack.model)
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


# ------------------------------------------------------------------------------ workers
def fake_worker_factory(settings: Settings):
    from tests.gateway.api._fake_worker import create_fake_service  # noqa: PLC0415

    service, _ = create_fake_service(settings)
    return service


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    s = start_stack(tmp_path_factory.mktemp("gw"), fake_worker_factory)
    s.model = "fake"
    yield s
    stop_stack(s)
