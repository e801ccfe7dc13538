"""Fixtures of the trainer tests: in-process hub + trainer servers (swiftmesh.testing.services,
one embedded 2-CPU Ray per module), datasets in every format, and a tiny model in the hub."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest


def trainer_settings(data_dir: Path, **trainer):
    """Settings under ``data_dir`` (every service on a free port) with an embedded 2-CPU Ray for
    the trainer; ``trainer`` overrides fields of the trainer's section."""
    from swiftmesh.testing.services import settings_for

    return settings_for(data_dir, trainer={"ray_num_cpus": 2, **trainer})


def start_stack(data_dir: Path, **trainer):
    """A hub and a trainer in this process (swiftmesh.testing.services.Stack: ``.settings``,
    ``.run(coro)``, ``["trainer"].service.manager``, ``.stop()``)."""
    from swiftmesh.testing.services import Stack

    stack = Stack(trainer_settings(data_dir, **trainer))
    try:
        stack.start("hub")
        stack.start("trainer")
    except BaseException:
        stack.stop()
        raise
    return stack


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
    from swiftmesh.services.trainer.servicer import training_spec

    src = LocalModelSource(tmp_path / "ref-models")
    src.add(tiny_model_dir, "tiny")
    settings = Settings.load(None, data_dir=tmp_path / "ref-data")
    kind = TrainKind("sft")
    plan = kind.prepare(training_spec(spec), PrepareContext(settings=settings, models=src, job="jobs/ref", cluster=ClusterResources.local))
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
