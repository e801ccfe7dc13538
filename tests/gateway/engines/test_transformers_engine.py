"""The transformers engine on the tiny model: continuous batching, sampling, stop strings,
logprobs, echo, aborts, multi-LoRA and constrained decoding."""

from __future__ import annotations

import asyncio
import json

import pytest
import pytest_asyncio
import torch
from swiftmesh.services.gateway.engines import (
    ChatMessage,
    ChatPrompt,
    EngineConfig,
    GenerationRequest,
    SamplingParams,
    StructuredOutput,
)
from swiftmesh.services.gateway.engines import telemetry as tm
from swiftmesh.services.gateway.engines.transformers_engine import TransformersEngine

from swiftmesh.runtime.errors import InvalidArgument, NotFound

from .helpers import collect, make_lora_adapter

pytestmark = pytest.mark.asyncio(loop_scope="module")

LONG = {"temperature": 0, "ignore_eos": True}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tiny_model_dir):
    # float32: outputs are compared with a float32 reference
    eng = TransformersEngine(EngineConfig(device="cpu", dtype="float32", max_num_seqs=8))
    await eng.load_model(tiny_model_dir, "m")
    yield eng
    await eng.shutdown()


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()


def greedy_reference(model, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy decoding without cache, padding or batching: the ground truth."""
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids])).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(prompt_ids):]


async def wait_idle(engine, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        st = engine.status()
        if st.running == 0 and st.waiting == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"engine still busy: {engine.status()}")


async def test_outputs_match_unbatched_greedy_decoding(engine, hf_model):
    prompts = ["one two three", "hello the capital of France is Paris and", "who", "json object key value true false"]
    results = await asyncio.gather(*(collect(engine, p, request_id=f"p{i}", max_tokens=24, **LONG)
                                     for i, p in enumerate(prompts)))
    for p, r in zip(prompts, results):
        ids = engine.bundle.encode(p)
        assert r.token_ids[0] == greedy_reference(hf_model, ids, 24)
        assert r.finish[0] == "length"
        assert r.last.usage.prompt_tokens == len(ids) and r.last.usage.completion_tokens == 24


async def test_a_request_joins_a_running_batch_and_finishes_first(engine):
    """Continuous batching: B arrives while A decodes, gets its first token and finishes before A."""
    a_prompt, b_prompt = "one two three four", "the capital of France"
    a_alone = await collect(engine, a_prompt, request_id="a0", max_tokens=700, **LONG)
    b_alone = await collect(engine, b_prompt, request_id="b0", max_tokens=6, **LONG)

    a_tokens: list[int] = []
    b_tokens: list[int] = []
    timeline: list[tuple[str, int, int]] = []  # (who, a tokens so far, b tokens so far)
    go = asyncio.Event()
    seen_running: list[int] = []

    async def run_a():
        async for out in engine.generate(GenerationRequest("a", "m", a_prompt, SamplingParams(max_tokens=700, **LONG))):
            for d in out.outputs:
                a_tokens.extend(d.token_ids)
            timeline.append(("a", len(a_tokens), len(b_tokens)))
            if len(a_tokens) >= 10:
                go.set()

    async def run_b():
        await go.wait()
        async for out in engine.generate(GenerationRequest("b", "m", b_prompt, SamplingParams(max_tokens=6, **LONG))):
            for d in out.outputs:
                b_tokens.extend(d.token_ids)
            seen_running.append(engine.status().running)
            timeline.append(("b", len(a_tokens), len(b_tokens)))

    await asyncio.gather(run_a(), run_b())
    b_first = next(t for t in timeline if t[0] == "b" and t[2] > 0)
    b_last = [t for t in timeline if t[0] == "b"][-1]
    assert 10 <= b_first[1] < 700, "B's first token came while A was decoding"
    assert b_last[1] < 700, "B finished before A"
    assert 2 in seen_running, "A and B were decoded in one batch"
    assert a_tokens == a_alone.token_ids[0] and b_tokens == b_alone.token_ids[0]


async def test_seed_reproducibility_independent_of_the_batch(engine):
    kw = {"temperature": 1.0, "max_tokens": 20, "ignore_eos": True}
    one = await collect(engine, "the quick brown", request_id="s1", seed=123, **kw)
    two, _noise = await asyncio.gather(
        collect(engine, "the quick brown", request_id="s2", seed=123, **kw),
        collect(engine, "other words here", request_id="s3", seed=9, **kw))
    other = await collect(engine, "the quick brown", request_id="s4", seed=124, **kw)
    assert one.token_ids[0] == two.token_ids[0]
    assert one.token_ids[0] != other.token_ids[0]


async def test_n_choices_each_reproducible(engine):
    kw = {"temperature": 1.0, "max_tokens": 12, "ignore_eos": True, "n": 3, "seed": 5}
    r1 = await collect(engine, "hello", request_id="n1", **kw)
    r2 = await collect(engine, "hello", request_id="n2", **kw)
    assert sorted(r1.token_ids) == [0, 1, 2] and r1.token_ids == r2.token_ids
    assert len({tuple(v) for v in r1.token_ids.values()}) > 1
    assert r1.last.usage.completion_tokens == 36
    assert r1.finish == {0: "length", 1: "length", 2: "length"}


async def test_stop_string_across_token_boundaries(engine):
    kw = {"temperature": 1.0, "seed": 11, "max_tokens": 40, "ignore_eos": True}
    ref = await collect(engine, "one two", request_id="st0", **kw)
    ids, text = ref.token_ids[0], ref.text[0]
    bundle = engine.bundle
    ends = [len(bundle.decode(ids[: i + 1])) for i in range(len(ids))]
    stop = None
    for i in range(1, len(ids) - 1):
        b = ends[i - 1]  # text boundary between token i-1 and token i
        if ends[i] - b >= 1 and b >= 1:
            cand = text[b - 1: b + 1]
            if cand.strip() and text.index(cand) == b - 1:
                stop = cand
                break
    assert stop, f"no boundary-spanning stop string found in {text!r}"
    r = await collect(engine, "one two", request_id="st1", stop=[stop], **kw)
    assert r.finish[0] == "stop" and r.stop_reason[0] == stop
    assert r.text[0] == text[: text.index(stop)]
    # the streamed pieces never contained any part of the stop string beyond the cut
    assert stop not in "".join(d.text for o in r.outputs for d in o.outputs)


async def test_logprobs_shapes(engine):
    r = await collect(engine, "one two three", request_id="lp", temperature=0, max_tokens=6, ignore_eos=True, logprobs=4)
    lps = r.logprobs[0]
    assert len(lps) == 6 == len(r.token_ids[0])
    for tok, lp in zip(r.token_ids[0], lps):
        assert lp.token_id == tok and lp.token == engine.bundle.token_text(tok)
        assert lp.logprob is not None and lp.logprob <= 0
        assert len(lp.top_logprobs) == 4
        values = [t.logprob for t in lp.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert lp.top_logprobs[0].token_id == tok and abs(values[0] - lp.logprob) < 1e-5  # greedy
        assert sum(torch.tensor(values).exp().tolist()) <= 1.0 + 1e-5
    none = await collect(engine, "one", request_id="lp0", temperature=0, max_tokens=2, logprobs=0)
    assert all(lp.top_logprobs == [] and lp.logprob is not None for lp in none.logprobs[0])


async def test_echo_with_prompt_logprobs(engine, hf_model):
    prompt = "the capital of France is"
    r = await collect(engine, prompt, request_id="echo", echo=True, temperature=0, max_tokens=1, prompt_logprobs=2)
    ids = engine.bundle.encode(prompt)
    first = r.first
    assert first.prompt_token_ids == ids and first.prompt_text == prompt
    pl = first.prompt_logprobs
    assert len(pl) == len(ids) and pl[0].logprob is None and pl[0].token_id == ids[0]
    with torch.no_grad():
        ref = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0], -1)
    for j in range(1, len(ids)):
        assert pl[j].token_id == ids[j]
        assert abs(pl[j].logprob - float(ref[j - 1, ids[j]])) < 1e-4
        assert [t.token_id for t in pl[j].top_logprobs] == ref[j - 1].topk(2).indices.tolist()


async def test_abort_frees_the_slot(engine):
    before = tm.REQUESTS.labels("m", "abort")._value.get()
    agen = engine.generate(GenerationRequest("ab", "m", "one", SamplingParams(max_tokens=900, **LONG)))
    got = 0
    async for out in agen:
        got += sum(len(d.token_ids) for d in out.outputs)
        if got >= 3:
            break
    assert engine.status().running == 1
    await agen.aclose()
    await wait_idle(engine)
    assert engine._sched.cache is None and engine.num_inflight == 0  # KV cache released
    assert tm.REQUESTS.labels("m", "abort")._value.get() == before + 1

    task = asyncio.create_task(collect(engine, "two", request_id="ab2", max_tokens=900, **LONG))
    while engine.status().running == 0 and not task.done():
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_idle(engine)
    r = await collect(engine, "three", request_id="ab3", max_tokens=3, **LONG)  # still serving
    assert r.finish[0] == "length"


async def test_min_tokens_and_eos(engine):
    eos = engine.bundle.eos_token_ids[0]
    r = await collect(engine, "hi", request_id="e1", temperature=0, max_tokens=10, logit_bias={eos: 100.0})
    assert r.token_ids[0] == [eos] and r.finish[0] == "stop" and r.text[0] == "" and r.stop_reason[0] == ""
    r = await collect(engine, "hi", request_id="e2", temperature=0, max_tokens=10, min_tokens=4, logit_bias={eos: 100.0})
    assert len(r.token_ids[0]) == 5 and r.token_ids[0][-1] == eos and eos not in r.token_ids[0][:4]
    r = await collect(engine, "hi", request_id="e3", temperature=0, max_tokens=5, logit_bias={eos: 100.0}, ignore_eos=True)
    assert r.token_ids[0] == [eos] * 5 and r.finish[0] == "length"


async def test_json_schema_and_json_object_outputs_parse(engine):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "maximum": 99}},
              "required": ["ok", "n"], "additionalProperties": False}
    r = await collect(engine, "json", request_id="js", temperature=1.0, seed=3, max_tokens=40,
                      structured=StructuredOutput("json_schema", json.dumps(schema)))
    value = json.loads(r.text[0])
    assert set(value) == {"ok", "n"} and isinstance(value["ok"], bool) and r.finish[0] == "stop"

    # favour the one-character tokens "{" and "}": the grammar must still make it valid JSON
    braces = [t for t in range(len(engine.bundle.tokenizer)) if engine.bundle.token_text(t) in ("{", "}")]
    bias = {t: 20.0 for t in braces}
    r = await collect(engine, "json object", request_id="jo", temperature=0, max_tokens=60,
                      structured=StructuredOutput("json_object"), logit_bias=bias)
    assert isinstance(json.loads(r.text[0]), dict) and r.finish[0] == "stop"
    free = await collect(engine, "json object", request_id="jo2", temperature=0, max_tokens=20, logit_bias=bias)
    with pytest.raises(ValueError):  # without the grammar the same request is not JSON
        json.loads(free.text[0])

    r = await collect(engine, "pick", request_id="ch", temperature=1.0, seed=1, max_tokens=10,
                      structured=StructuredOutput("choice", ["yes please", "no thanks"]))
    assert r.text[0] in ("yes please", "no thanks")


async def test_errors_name_the_problem(engine):
    with pytest.raises(NotFound):
        await collect(engine, "x", model="nope")
    with pytest.raises(InvalidArgument) as e:
        await collect(engine, "one " * 1100, max_tokens=1)
    assert e.value.reason == "CONTEXT_LENGTH_EXCEEDED" and e.value.field_violations[0].field == "prompt"
    with pytest.raises(InvalidArgument) as e:
        await collect(engine, "one", max_tokens=5000)
    assert e.value.field_violations[0].field == "sampling.max_tokens"
    with pytest.raises(InvalidArgument) as e:
        await collect(engine, "one", top_p=1.5)
    assert e.value.field_violations[0].field == "sampling.top_p"
    with pytest.raises(InvalidArgument) as e:
        await collect(engine, "one", structured=StructuredOutput("regex", "(unclosed"))
    assert "structured_output" in e.value.field_violations[0].field
    chat = ChatPrompt([ChatMessage("user", "hello")])
    r = await collect(engine, chat, max_tokens=2, temperature=0)
    assert r.first.prompt_text.endswith("<|im_start|>assistant\n")


async def test_multi_lora_in_one_batch(tiny_model_dir, hf_model, tmp_path_factory):
    from peft import PeftModel

    root = tmp_path_factory.mktemp("adapters")
    a = make_lora_adapter(tiny_model_dir, root / "lora-a", seed=1)
    b = make_lora_adapter(tiny_model_dir, root / "lora-b", seed=2)
    eng = TransformersEngine(EngineConfig(device="cpu", dtype="float32", max_num_seqs=8))
    await eng.load_model(tiny_model_dir, "base")
    try:
        info = await eng.load_adapter(a, "a")
        assert info.parent == "base" and info.id == "a"
        await eng.load_adapter(b, "b")
        assert [m.id for m in eng.list_models()] == ["base", "a", "b"]
        prompt = "the capital of France is"
        ids = eng.bundle.encode(prompt)
        running: list[int] = []

        async def run(model: str):
            out: list[int] = []
            async for o in eng.generate(GenerationRequest(f"q-{model}", model, prompt,
                                                          SamplingParams(max_tokens=40, **LONG))):
                out += [t for d in o.outputs for t in d.token_ids]
                running.append(eng.status().running)
            return out

        base_out, a_out, b_out = await asyncio.gather(run("base"), run("a"), run("b"))
        assert max(running) == 3, "the three requests shared a batch"
        assert len({tuple(base_out), tuple(a_out), tuple(b_out)}) == 3
        assert base_out == greedy_reference(hf_model, ids, 40)
        for path, got in ((a, a_out), (b, b_out)):
            from transformers import AutoModelForCausalLM

            ref_model = PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32), str(path)).eval()
            assert got == greedy_reference(ref_model, ids, 40)

        await eng.unload_adapter("b")
        with pytest.raises(NotFound):
            await collect(eng, prompt, model="b", max_tokens=2)
        again = await collect(eng, prompt, model="a", max_tokens=40, **LONG)
        assert again.token_ids[0] == a_out
        await eng.unload_adapter("a")
        assert (await collect(eng, prompt, model="base", max_tokens=40, **LONG)).token_ids[0] == base_out
    finally:
        await eng.shutdown()
