"""The LmDeploy engine.

LmDeploy needs a CUDA GPU: the real-engine test runs where one is present and skips elsewhere
with the reason. The shared code path (tokenization, detokenization, stop strings across token
boundaries that cancel the LmDeploy session, n choices, finish reasons, adapter rebuilds) runs
everywhere against a stand-in for LmDeploy's ``EngineInstance`` API.
"""

from __future__ import annotations

import asyncio
import enum
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from swiftmesh.services.gateway.engines import (
    ChatMessage,
    ChatPrompt,
    EngineConfig,
    GenerationRequest,
    SamplingParams,
)
from swiftmesh.services.gateway.engines import lmdeploy_engine as lm

from swiftmesh.runtime.errors import FailedPrecondition, InvalidArgument

from .helpers import collect

pytestmark = pytest.mark.asyncio(loop_scope="function")

AVAILABLE, WHY = lm.lmdeploy_available()


# ------------------------------------------------------------------------------------ real
@pytest.mark.gpu
@pytest.mark.skipif(not AVAILABLE, reason=f"LmDeploy cannot run here: {WHY}")
async def test_lmdeploy_on_smollm2(smollm2_dir):
    eng = lm.LmDeployEngine(EngineConfig(device="cuda", max_model_len=2048, gpu_memory_utilization=0.3))
    await eng.load_model(smollm2_dir, "smol")
    try:
        q = ChatPrompt([ChatMessage("user", "What is the capital of France? Answer in one sentence.")])
        r = await collect(eng, q, model="smol", temperature=0, max_tokens=24)
        assert "Paris" in r.text[0] and r.finish[0] == "stop"
        r = await collect(eng, q, model="smol", temperature=0, max_tokens=24, stop=["of Fr"])
        assert r.finish[0] == "stop" and r.stop_reason[0] == "of Fr" and "Fr" not in r.text[0]
        r = await collect(eng, q, model="smol", temperature=0, max_tokens=4, ignore_eos=True, logprobs=2)
        assert r.finish[0] == "length" and len(r.token_ids[0]) == 4
    finally:
        await eng.shutdown()


# ------------------------------------------------------------------------------ stand-in
class ResponseType(enum.Enum):
    SUCCESS = enum.auto()
    FINISH = enum.auto()
    INTERNAL_ENGINE_ERROR = enum.auto()


@dataclass
class EngineOutput:
    status: ResponseType
    token_ids: list[int]
    logprobs: Any = None


class GenerationConfig:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


class PytorchEngineConfig(GenerationConfig):
    pass


@dataclass
class FakeEngine:
    """Answers with a fixed token script per adapter, two tokens per message, like LmDeploy:
    stops (without returning it) at a stop token, or at max_new_tokens."""

    config: Any
    scripts: dict[str | None, list[int]]
    cancelled: list[int] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)
    configs: list[Any] = field(default_factory=list)
    closed: bool = False

    def create_instance(self):
        return FakeInstance(self)

    def close(self) -> None:
        self.closed = True


class FakeInstance:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine

    async def async_stream_infer(self, session_id, input_ids, gen_config=None, adapter_name=None, **kw):
        self.engine.configs.append(gen_config)
        script = self.engine.scripts[adapter_name]
        stops = set(gen_config.stop_token_ids or [])

        def msg(status: ResponseType, toks: list[int]) -> EngineOutput:
            lps = [{t: -0.5, 7: -1.5} for t in toks] if gen_config.logprobs else None
            return EngineOutput(status, toks, logprobs=lps)

        out: list[int] = []
        sent = 0
        for tok in script:
            await asyncio.sleep(0)
            if session_id in self.engine.cancelled:
                return
            if tok in stops and not gen_config.ignore_eos:
                break
            out.append(tok)
            if len(out) >= gen_config.max_new_tokens:
                break
            if len(out) - sent == 2:
                yield msg(ResponseType.SUCCESS, out[sent:])
                sent = len(out)
        yield msg(ResponseType.FINISH, out[sent:])

    async def async_cancel(self, session_id):
        self.engine.cancelled.append(session_id)

    async def async_end(self, session_id):
        self.engine.ended.append(session_id)


@pytest_asyncio.fixture
async def fake(monkeypatch, tiny_model_dir):
    from swiftmesh.services.gateway.engines.processing import TokenizerBundle

    bundle = TokenizerBundle.from_pretrained(tiny_model_dir)
    eos = bundle.eos_token_ids[0]
    scripts = {
        None: bundle.encode(" The capital of France is Paris. It is nice.", add_special_tokens=False) + [eos, 5, 6],
        "tuned": bundle.encode(" I am SmolLM, an AI assistant.", add_special_tokens=False) + [eos],
    }
    built: list[FakeEngine] = []

    class Engine:
        @staticmethod
        def from_pretrained(path, engine_config):
            e = FakeEngine(engine_config, scripts)
            built.append(e)
            return e

    root = types.ModuleType("lmdeploy")
    root.GenerationConfig, root.PytorchEngineConfig = GenerationConfig, PytorchEngineConfig
    messages = types.ModuleType("lmdeploy.messages")
    messages.ResponseType = ResponseType
    pt = types.ModuleType("lmdeploy.pytorch")
    pt_engine = types.ModuleType("lmdeploy.pytorch.engine")
    pt_engine.Engine = Engine
    for name, mod in {"lmdeploy": root, "lmdeploy.messages": messages, "lmdeploy.pytorch": pt,
                      "lmdeploy.pytorch.engine": pt_engine}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(lm, "lmdeploy_available", lambda: (True, ""))
    eng = lm.LmDeployEngine(EngineConfig(device="cuda", max_num_seqs=4))
    await eng.load_model(tiny_model_dir, "m")
    yield eng, built, bundle
    await eng.shutdown()


async def test_shared_path_text_finish_and_usage(fake):
    eng, built, bundle = fake
    r = await collect(eng, "hi", temperature=0, max_tokens=50)
    assert r.text[0] == " The capital of France is Paris. It is nice." and r.finish[0] == "stop"
    assert r.last.usage.completion_tokens == len(r.token_ids[0]) and r.last.usage.prompt_tokens == len(bundle.encode("hi"))
    cfg = built[0].configs[0]
    assert cfg.max_new_tokens == 50 and not cfg.do_sample and bundle.eos_token_ids[0] in cfg.stop_token_ids
    r = await collect(eng, "hi", temperature=0, max_tokens=3)
    assert r.finish[0] == "length" and len(r.token_ids[0]) == 3


async def test_stop_string_across_tokens_cancels_the_session(fake):
    eng, built, bundle = fake
    script = bundle.encode(" The capital of France is Paris.", add_special_tokens=False)
    assert not any("ce is Pa" in bundle.token_text(t) for t in script)  # it spans several tokens
    r = await collect(eng, "hi", temperature=0, max_tokens=50, stop=["ce is Pa"])
    assert r.finish[0] == "stop" and r.stop_reason[0] == "ce is Pa"
    assert r.text[0] == " The capital of Fran"
    assert built[0].cancelled and built[0].ended == built[0].cancelled


async def test_n_choices_seeds_logprobs_and_adapters(fake, tiny_model_dir, tmp_path):
    eng, built, _ = fake
    r = await collect(eng, "hi", temperature=0.7, seed=10, n=2, max_tokens=6, logprobs=1)
    assert sorted(r.finish) == [0, 1] and r.token_ids[0] == r.token_ids[1]
    assert [c.random_seed for c in built[0].configs[-2:]] in ([10, 11], [11, 10])
    assert all(lp.logprob == -0.5 for lp in r.logprobs[0])

    adapter = tmp_path / "tuned"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    await eng.load_adapter(adapter, "tuned")
    assert len(built) == 2 and built[0].closed and built[1].config.adapters == {"tuned": str(adapter)}
    r = await collect(eng, "hi", model="tuned", temperature=0, max_tokens=50)
    assert r.text[0] == " I am SmolLM, an AI assistant."


async def test_unsupported_parameters_and_busy_rebuild(fake, tmp_path):
    eng, _, _ = fake
    with pytest.raises(InvalidArgument) as e:
        await collect(eng, "hi", max_tokens=3, presence_penalty=0.5)
    assert e.value.field_violations[0].field == "sampling.presence_penalty"
    agen = eng.generate(GenerationRequest("busy", "m", "hi", SamplingParams(max_tokens=50)))
    await agen.__anext__()
    adapter = tmp_path / "a2"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    with pytest.raises(FailedPrecondition):
        await eng.load_adapter(adapter, "a2")
    await agen.aclose()
