"""The OpenAI API through the gateway, with the OpenAI SDK as the client (real HTTP, real worker)."""

from __future__ import annotations

import json
import math

import httpx
import pytest

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
NO_EOS = {"ignore_eos": True}


def _chat_stream_text(client, **kw) -> tuple[str, list]:
    chunks = list(client.chat.completions.create(stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_models_list_and_retrieve(stack):
    client = stack.client()
    models = client.models.list().data
    ids = [m.id for m in models]
    assert stack.model in ids
    base = next(m for m in models if m.id == stack.model)
    assert base.object == "model" and base.owned_by == "swiftmesh"
    assert getattr(base, "parent", "missing") is None
    assert client.models.retrieve(stack.model).id == stack.model


def test_chat_completion_shape_and_usage(stack):
    client = stack.client()
    r = client.chat.completions.create(model=stack.model, messages=MESSAGES, max_tokens=8, temperature=0,
                                       extra_body=NO_EOS)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == stack.model
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason == "length"
    assert r.usage.completion_tokens == 8
    assert r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_max_completion_tokens_is_honoured(stack):
    r = stack.client().chat.completions.create(model=stack.model, messages=MESSAGES, max_completion_tokens=3,
                                               temperature=0, extra_body=NO_EOS)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_chat_streamed_equals_non_streamed_at_temperature_0(stack):
    client = stack.client()
    kw = {"model": stack.model, "messages": MESSAGES, "max_tokens": 16, "temperature": 0, "extra_body": NO_EOS}
    full = client.chat.completions.create(**kw).choices[0].message.content
    text, chunks = _chat_stream_text(client, **kw)
    assert text == full
    # OpenAI's stream shape: role first, content deltas, a last chunk with the finish reason.
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # really streamed


def test_stream_ends_with_done_event(stack):
    body = {"model": stack.model, "messages": MESSAGES, "max_tokens": 4, "stream": True, "temperature": 0}
    with httpx.stream("POST", f"{stack.base_url}/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_completions_streamed_equals_non_streamed(stack):
    client = stack.client()
    kw = {"model": stack.model, "prompt": "The capital of France is", "max_tokens": 12, "temperature": 0, "extra_body": NO_EOS}
    full = client.completions.create(**kw)
    assert full.object == "text_completion" and full.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_completions_default_max_tokens_is_16(stack):
    r = stack.client().completions.create(model=stack.model, prompt="Hello", temperature=0, extra_body=NO_EOS)
    assert r.usage.completion_tokens == 16


def test_finish_reason_stop_at_a_stop_string_across_tokens(stack):
    client = stack.client()
    # Seeded sampling: reproducible, and varied enough to find a stop string across tokens.
    kw = {"model": stack.model, "messages": MESSAGES, "temperature": 1.0, "seed": 11, "extra_body": NO_EOS}
    ref = client.chat.completions.create(max_tokens=32, logprobs=True, **kw)
    tokens = [t.token for t in ref.choices[0].logprobs.content]
    text = ref.choices[0].message.content
    assert "".join(tokens) == text
    # A stop string made of the end of one token and the start of the next, first seen there.
    offset = 0
    for i in range(len(tokens) - 1):
        offset += len(tokens[i])
        a, b = tokens[i], tokens[i + 1]
        if i >= 1 and a and b:
            stop = a[-2:] + b[:2]
            if text.index(stop) == offset - len(a[-2:]):
                break
    else:
        pytest.fail(f"no usable token boundary in {tokens}")
    expected = text[: text.index(stop)]
    r = client.chat.completions.create(max_tokens=32, stop=[stop], **kw)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == expected
    # The same through a stream.
    streamed, chunks = _chat_stream_text(client, max_tokens=32, stop=stop, **kw)
    assert streamed == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    # And on completions.
    rc = client.completions.create(model=stack.model, prompt="Hello", max_tokens=32, temperature=1.0, seed=5,
                                   extra_body=NO_EOS)
    text_c = rc.choices[0].text
    stop_c = text_c[10:13]
    rs = client.completions.create(model=stack.model, prompt="Hello", max_tokens=32, temperature=1.0, seed=5,
                                   stop=stop_c, extra_body=NO_EOS)
    assert rs.choices[0].finish_reason == "stop" and rs.choices[0].text == text_c[: text_c.index(stop_c)]


def test_include_usage_semantics(stack):
    client = stack.client()
    kw = {"model": stack.model, "messages": MESSAGES, "max_tokens": 5, "temperature": 0, "extra_body": NO_EOS}
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 5
    assert last.usage.total_tokens == last.usage.prompt_tokens + 5
    assert all(c.usage is None for c in chunks[:-1])
    # Without include_usage no chunk carries usage, and every chunk has a choice.
    plain = list(client.chat.completions.create(stream=True, **kw))
    assert all(c.usage is None and c.choices for c in plain)
    # Completions too.
    comp = list(client.completions.create(model=stack.model, prompt="Hi", max_tokens=4, stream=True,
                                          stream_options={"include_usage": True}, extra_body=NO_EOS))
    assert comp[-1].choices == [] and comp[-1].usage.completion_tokens == 4


def test_n_2(stack):
    client = stack.client()
    r = client.chat.completions.create(model=stack.model, messages=MESSAGES, n=2, max_tokens=6, temperature=1.0,
                                       seed=3, extra_body=NO_EOS)
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in r.choices)
    assert r.usage.completion_tokens == 12
    chunks = list(client.completions.create(model=stack.model, prompt="Hi", n=2, max_tokens=3, stream=True,
                                            extra_body=NO_EOS))
    finished = {c.choices[0].index: c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason}
    assert finished == {0: "length", 1: "length"}


def test_seed_reproducibility(stack):
    client = stack.client()
    kw = {"model": stack.model, "messages": MESSAGES, "max_tokens": 12, "temperature": 1.0, "extra_body": NO_EOS}
    a = client.chat.completions.create(seed=1234, **kw).choices[0].message.content
    b = client.chat.completions.create(seed=1234, **kw).choices[0].message.content
    assert a == b
    others = {client.chat.completions.create(seed=s, **kw).choices[0].message.content for s in (1, 2, 3)}
    assert others - {a}, "different seeds all gave the same sample"


def test_chat_logprobs_shapes(stack):
    r = stack.client().chat.completions.create(model=stack.model, messages=MESSAGES, max_tokens=6, temperature=0,
                                               logprobs=True, top_logprobs=3, extra_body=NO_EOS)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 6
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and math.isfinite(t.logprob)
        assert len(t.top_logprobs) == 3
        assert t.bytes == list(t.token.encode())
        # Greedy: the chosen token is the most likely one.
        assert t.top_logprobs[0].token == t.token
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob, abs=1e-4)
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
    # Streamed: the same tokens, spread over the chunks.
    chunks = list(stack.client().chat.completions.create(
        model=stack.model, messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3,
        stream=True, extra_body=NO_EOS))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [(t.token, round(t.logprob, 4)) for t in content]
    assert all(len(t.top_logprobs) == 3 for t in streamed)
    # Without logprobs: none.
    r = stack.client().chat.completions.create(model=stack.model, messages=MESSAGES, max_tokens=2)
    assert r.choices[0].logprobs is None


def test_completion_echo_with_logprobs(stack):
    """The log-likelihood path of evaluation harnesses (lm-eval): echo + logprobs + max_tokens 1."""
    client = stack.client()
    prompt = "The capital of France is Paris"
    r = client.completions.create(model=stack.model, prompt=prompt, max_tokens=1, echo=True, logprobs=2,
                                  temperature=0, extra_body=NO_EOS)
    c = r.choices[0]
    assert c.text.startswith(prompt)
    lp = c.logprobs
    n_prompt = r.usage.prompt_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n_prompt + 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(x is not None and x <= 0 for x in lp.token_logprobs[1:])
    assert all(1 <= len(t) <= 3 for t in lp.top_logprobs[1:])  # top 2, plus the chosen token when not among them
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    # Streamed echo: the prompt (and its logprobs) come first.
    chunks = list(client.completions.create(model=stack.model, prompt=prompt, max_tokens=1, echo=True, logprobs=2,
                                            temperature=0, stream=True, extra_body=NO_EOS))
    assert "".join(ch.choices[0].text for ch in chunks) == c.text
    assert [t for ch in chunks if ch.choices[0].logprobs for t in ch.choices[0].logprobs.tokens] == lp.tokens
    # max_tokens 0: only the prompt is scored, nothing generated.
    r0 = client.completions.create(model=stack.model, prompt=prompt, max_tokens=0, echo=True, logprobs=0)
    assert r0.choices[0].text.startswith(prompt) and len(r0.choices[0].logprobs.tokens) == n_prompt
    assert r0.usage.completion_tokens == 0
    assert r0.choices[0].logprobs.token_logprobs[1:] == pytest.approx(lp.token_logprobs[1:n_prompt], abs=1e-4)


def test_completion_token_id_prompts_and_batches(stack):
    client = stack.client()
    r = client.completions.create(model=stack.model, prompt=["Hello", "The capital"], max_tokens=3, n=2,
                                  temperature=0, extra_body=NO_EOS)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.usage.completion_tokens == 12
    echo = client.completions.create(model=stack.model, prompt="Hello there", max_tokens=1, echo=True, logprobs=0)
    ids_prompt = r.usage.prompt_tokens  # noqa: F841 - both prompts together
    r_ids = client.completions.create(model=stack.model, prompt=[5, 6, 7, 8], max_tokens=2, temperature=0,
                                      extra_body=NO_EOS)
    assert r_ids.usage.prompt_tokens == 4 and r_ids.usage.completion_tokens == 2
    assert echo.usage.prompt_tokens >= 1


def test_extras_are_accepted(stack):
    r = stack.client().chat.completions.create(
        model=stack.model, messages=MESSAGES, max_tokens=4, temperature=0.7, top_p=0.9, presence_penalty=0.5,
        frequency_penalty=0.5, logit_bias={"5": -100}, seed=1,
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "ignore_eos": True, "min_tokens": 2},
    )
    assert r.usage.completion_tokens == 4


def test_health_and_openapi(stack):
    assert httpx.get(f"{stack.http}/health").json()["status"] == "ok"
    schema = httpx.get(f"{stack.http}/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(schema["paths"])
    assert not any(p.startswith("/v1/admin") for p in schema["paths"])


CITY_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                       "required": ["city"], "additionalProperties": False},
    },
}


def test_response_format_json_schema_and_json_object(stack):
    client = stack.client()
    schema = {"type": "object", "properties": {"answer": {"type": "boolean"}}, "required": ["answer"],
              "additionalProperties": False}
    r = client.chat.completions.create(
        model=stack.model, messages=MESSAGES, max_tokens=40, temperature=1.0, seed=2,
        response_format={"type": "json_schema", "json_schema": {"name": "yes_no", "schema": schema}})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content)["answer"], bool)
    r = client.chat.completions.create(model=stack.model, messages=MESSAGES, max_tokens=40, temperature=0,
                                       response_format={"type": "json_object"})
    content = r.choices[0].message.content
    assert content.startswith("{")  # constrained from the first token
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    # Completions accept it too (a vLLM extra).
    rc = client.completions.create(model=stack.model, prompt="JSON:", max_tokens=40, temperature=1.0, seed=2,
                                   extra_body={"response_format": {"type": "json_schema",
                                                                   "json_schema": {"name": "x", "schema": schema}}})
    assert isinstance(json.loads(rc.choices[0].text)["answer"], bool)


def test_named_tool_choice_calls_the_function(stack):
    client = stack.client()
    kw = {"model": stack.model, "messages": MESSAGES, "max_tokens": 40, "temperature": 1.0, "seed": 4,
          "tools": [CITY_TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    r = client.chat.completions.create(**kw)
    message = r.choices[0].message
    assert message.content is None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Rome")
    # Streamed: the name first, then the arguments in pieces that add up to the same call.
    chunks = list(client.chat.completions.create(stream=True, **kw))
    deltas = [tc for c in chunks if c.choices and c.choices[0].delta.tool_calls for tc in c.choices[0].delta.tool_calls]
    assert deltas[0].function.name == "get_weather"
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
