"""Fixtures of the trainer tests: in-process hub + trainer servers (own event loop in a thread,
one embedded 2-CPU Ray per module), datasets in every format, and a tiny model in the hub."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings_for(data_dir: Path, **trainer):
    from swiftmesh.runtime.config import Settings

    return Settings.load(
        None,
        data_dir=data_dir,
        hub={"port": free_port(), "metrics_port": 0},
        trainer={"port": free_port(), "metrics_port": 0, "ray_num_cpus": 2, **trainer},
        aligner={"port": free_port(), "metrics_port": 0},
        worker={"port": free_port(), "metrics_port": 0},
        gateway={"port": free_port(), "http_port": free_port(), "metrics_port": 0},
    )


class ServerThread:
    """Services on their own event loop in a daemon thread (tests call them over gRPC)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running = []

    def start(self, service, settings):
        from swiftmesh.runtime.server import start_server

        r = asyncio.run_coroutine_threadsafe(start_server(service, settings), self.loop).result(120)
        self.running.append(r)
        return r

    def call(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        for r in reversed(self.running):
            try:
                self.call(r.stop(0), 120)
            except Exception:  # noqa: BLE001
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Stack:
    def __init__(self, settings, hub, trainer, threads: ServerThread) -> None:
        self.settings = settings
        self.hub = hub
        self.trainer = trainer
        self.threads = threads

    @property
    def manager(self):
        return self.trainer.service.manager

    def run(self, coro, timeout: float = 600):
        """Run a client coroutine on a fresh loop in this thread."""
        return asyncio.run(asyncio.wait_for(coro, timeout))


def start_stack(data_dir: Path, **trainer) -> Stack:
    from swiftmesh.services.hub.server import create_service as hub_service
    from swiftmesh.services.trainer.server import create_service as trainer_service

    settings = settings_for(data_dir, **trainer)
    threads = ServerThread()
    hub = threads.start(hub_service(settings), settings)
    tr = threads.start(trainer_service(settings), settings)
    return Stack(settings, hub, tr, threads)


def pull(settings, source: Path | str, model_id: str, **kw):
    from swiftmesh.clients.hub import HubClient

    async def go():
        async with HubClient(settings) as hub:
            return await hub.pull(str(source), model_id, **kw)

    return asyncio.run(go())


IDENTITY_Q = ["Who are you?", "What is your name?", "Introduce yourself.", "Who made you?", "What are you?",
              "Tell me about yourself.", "Are you ChatGPT?", "What should I call you?"]
IDENTITY_A = "I am Swifty, an assistant trained by the SwiftMesh team."


def identity_rows(n: int = 16) -> list[dict]:
    return [{"messages": [{"role": "user", "content": IDENTITY_Q[i % len(IDENTITY_Q)]},
                          {"role": "assistant", "content": IDENTITY_A}]} for i in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def identity_jsonl(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "identity.jsonl", identity_rows(16))


def reference_adapter(tmp_path, tiny_model_dir, data, spec):
    """The same job run uninterrupted, in this process (one worker, no Ray)."""
    from swiftmesh.jobkit import LocalModelSource, PrepareContext, WorkerContext
    from swiftmesh.jobkit.kinds import ClusterResources
    from swiftmesh.runtime.config import Settings
    from swiftmesh.services.trainer.kinds import TrainKind

    src = LocalModelSource(tmp_path / "ref-models")
    src.add(tiny_model_dir, "tiny")
    settings = Settings.load(None, data_dir=tmp_path / "ref-data")
    kind = TrainKind("sft")
    plan = kind.prepare(spec, PrepareContext(settings=settings, models=src, job="jobs/ref", cluster=ClusterResources.local))
    work = tmp_path / "ref-work"
    work.mkdir()
    ctx = WorkerContext(job="jobs/ref", rank=0, world_size=1, local_rank=0, config=plan.config, data=plan.data,
                        settings=settings, models=src, work_dir=work)
    (art,) = kind.train(ctx)
    return Path(art.path)


def adapter_tensors(d: Path):
    from safetensors.torch import load_file

    return load_file(str(d / "adapter_model.safetensors"))


def no_ray_leftovers_check() -> None:
    """Fail if this test process still has a Ray connection after the module ends."""
    import ray

    assert not ray.is_initialized()


os.environ.setdefault("DS_ACCELERATOR", "cpu")
