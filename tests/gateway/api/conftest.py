"""Fixtures of the gateway REST tests: a real engine worker and the gateway, served from a
background event loop (swiftmesh.testing.services) so that tests use the synchronous OpenAI SDK
(and schemathesis, the CLI) over real HTTP on loopback.

* ``stack``: in-process workers serving the tiny model (and the tiny model without a chat
  template) + the gateway (session scope).
* ``Stack.run(coro)`` runs a coroutine on the servers' loop (pool state, worker status).
* :func:`worker_process`: ``swiftmesh serve worker`` as a child process (killable with SIGKILL).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest

from swiftmesh.runtime.config import Settings
from swiftmesh.testing.services import ServiceLoop, ServiceProcess, free_ports, settings_for, start_in_process


def gateway_settings(data_dir: Path, **gateway) -> Settings:
    """Settings under ``data_dir`` (every service on a free port) with a gateway that checks its
    workers every 0.5 s and a 1 s drain; ``gateway`` overrides fields of the gateway's section."""
    return settings_for(data_dir, gateway={"health_check_interval_s": 0.5, **gateway}, shutdown_grace_s=1.0)


@dataclass
class Stack:
    """Servers running on ``loop``: workers and a gateway (``gateway`` is its RunningServer,
    ``gateway_service`` its Service with ``.pool``, ``.keys``, ``.http_port``)."""

    settings: Settings
    loop: ServiceLoop
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
    the real engine worker, and a gateway in front of them, all on one :class:`ServiceLoop`.

    Workers start one at a time, each once it is SERVING (its model loaded): transformers model
    loading is not thread-safe within one process, and production runs one worker per process."""
    loop = ServiceLoop("servers")
    ports = free_ports(len(workers))
    settings = gateway_settings(tmp / "data", workers=[f"127.0.0.1:{p}" for p in ports], **gateway)
    stack = Stack(settings, loop)
    for port, fields in zip(ports, workers):
        worker = settings.worker.model_copy(update={"port": port, "device": "cpu", **fields})
        ws = settings.model_copy(update={"worker": worker})
        stack.workers.append(start_in_process("worker", ws, loop=loop, timeout=120).running)
    gw = start_in_process("gateway", settings, loop=loop)
    stack.gateway_service, stack.gateway = gw.service, gw.running
    return stack


def start_extra_gateway(stack: Stack, tmp: Path, **settings_overrides) -> Stack:
    """Another gateway on ``stack``'s loop and workers, with other settings (auth, limits)."""
    gateway = {"workers": list(stack.settings.gateway.workers), **settings_overrides.pop("gateway", {})}
    settings = settings_for(tmp, gateway={"health_check_interval_s": 0.5, **gateway}, shutdown_grace_s=1.0,
                            **settings_overrides)
    other = Stack(settings, stack.loop, model=stack.model, raw_model=stack.raw_model, model_dir=stack.model_dir)
    gw = start_in_process("gateway", settings, loop=stack.loop)
    other.gateway_service, other.gateway = gw.service, gw.running
    return other


def stop_stack(stack: Stack) -> None:
    try:
        if stack.gateway is not None:
            stack.run(stack.gateway.stop(0.5), 60)
        for w in stack.workers:
            stack.run(w.stop(0.5), 60)
    finally:
        stack.loop.close()


def worker_process(stack: Stack, port: int, log_path: Path) -> ServiceProcess:
    """``swiftmesh serve worker`` serving the stack's model (a local directory) on ``port``, with
    its own data dir next to ``log_path``; started, not yet waited for (``.wait_ready()``)."""
    settings = settings_for(log_path.parent / f"worker-{port}",
                            worker={"port": port, "model": str(stack.model_dir), "device": "cpu"},
                            telemetry={"log_level": "WARNING"})
    return ServiceProcess("worker", settings, log=log_path, env={"OMP_NUM_THREADS": "1"}, new_session=False).start()


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
