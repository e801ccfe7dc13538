"""Fixtures of the aligner tests: toy, separable preference data for the tiny model, and
:func:`start_stack`, the hub and aligner (and trainer) served in this process."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest


def start_stack(data_dir: Path, *, trainer: bool = False):
    """Hub and aligner (and the trainer when asked) in this process on loopback, sharing one
    embedded 2-CPU Ray (swiftmesh.testing.services.Stack: ``.settings``, ``.hub(fn)``,
    ``.aligner(fn)``, ``.run(coro)``, ``.stop()``)."""
    from swiftmesh.jobkit.ray_runtime import RayRuntime
    from swiftmesh.testing.services import Stack, settings_for

    stack = Stack(settings_for(data_dir, trainer={"ray_num_cpus": 2}, aligner={"ray_num_cpus": 2}))
    try:
        stack.start("hub")
        runtime = RayRuntime(None, 2)
        if trainer:
            stack.start("trainer", runtime=runtime)
        stack.start("aligner", runtime=runtime)
    except BaseException:
        stack.stop()
        raise
    return stack


WORDS = "the a model data city country number good bad fast slow one two three".split()
CHOSEN = "yes thank you"
REJECTED = "no please"


def toy_prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6))) for _ in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    """16 conversational pairs (ms-swift messages + rejected_response): the preferred reply is
    always CHOSEN, the dispreferred one REJECTED, so a policy can separate them perfectly."""
    rows = [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": CHOSEN}],
         "rejected_response": REJECTED}
        for p in toy_prompts(16)
    ]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


@pytest.fixture
def text_pairs_file(tmp_path) -> Path:
    """The same pairs as plain text prompt/chosen/rejected."""
    rows = [{"prompt": p + "\n", "chosen": " " + CHOSEN, "rejected": " " + REJECTED} for p in toy_prompts(16)]
    return write_jsonl(tmp_path / "text_pairs.jsonl", rows)


@pytest.fixture(scope="session")
def tiny_dir(tiny_model_dir) -> str:
    return str(tiny_model_dir)
