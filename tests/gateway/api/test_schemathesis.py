"""schemathesis over the gateway's /openapi.json (valid and invalid requests): never a 5xx, and
every error in OpenAI's envelope."""

from __future__ import annotations

import zlib

import pytest
import schemathesis

# schemathesis loads its OpenAPI modules lazily and pytest's assertion rewriter compiles them (it is
# a pytest plugin); compiled inside a test after an earlier one caught a RecursionError (deeply nested
# JSON bodies), CPython 3.11.7 fails with "AST constructor recursion depth mismatch" (gh-106905,
# fixed in 3.11.8). Imported here, at collection.
import schemathesis.specs.openapi.schemas
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode

#: Examples per operation and generation mode (positive and negative).
MAX_EXAMPLES = 60


def _bound_cost(case, model: str) -> None:
    """Keep generated requests cheap for a CPU worker: few choices, prompts and tokens. Only
    valid values are lowered (invalid ones stay to be rejected); the model is the served one
    half of the time so generation paths are reached."""
    body = case.body
    if not isinstance(body, dict):
        return
    for key, cap in (("n", 2), ("best_of", 2), ("max_tokens", 8), ("max_completion_tokens", 8), ("min_tokens", 4),
                     ("logprobs", 3), ("top_logprobs", 3)):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > cap:
            body[key] = cap
    if "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_tokens"] = 8
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) > 3:
        body["prompt"] = prompt[:3]
    if isinstance(body.get("messages"), list) and len(body["messages"]) > 4:
        body["messages"] = body["messages"][:4]
    if isinstance(body.get("model"), str) and zlib.crc32(repr(sorted(body)).encode()) % 3 != 0:
        body["model"] = model


OPERATIONS = ["GET /v1/models", "GET /v1/models/{model}", "POST /v1/chat/completions", "POST /v1/completions"]


CASES = [(op, mode) for op in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if op.startswith("POST") or mode is GenerationMode.POSITIVE]  # GETs have no parameter to break


@pytest.mark.parametrize(("operation", "mode"), CASES, ids=[f"{op}-{m.value}" for op, m in CASES])
def test_no_server_errors(stack, operation, mode):
    schema = schemathesis.openapi.from_url(f"{stack.http}/openapi.json")
    ops = {f"{op.method.upper()} {op.path}": op for op in (r.ok() for r in schema.get_all_operations())}
    assert set(OPERATIONS) <= set(ops), sorted(ops)
    seen: list[int] = []

    @given(case=ops[operation].as_strategy(generation_mode=mode))
    @settings(deadline=None, suppress_health_check=list(HealthCheck), max_examples=MAX_EXAMPLES, derandomize=True,
              database=None)
    def check(case):
        _bound_cost(case, stack.model)
        response = case.call(timeout=120)
        seen.append(response.status_code)
        assert response.status_code < 500, (
            f"{case.method} {case.path} {case.body!r} -> {response.status_code} {response.text}")
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"]

    check()
    print(operation, mode.value, {c: seen.count(c) for c in sorted(set(seen))})
    assert seen
    if mode is GenerationMode.NEGATIVE:
        assert any(400 <= c < 500 for c in seen)  # invalid requests were rejected, not served
    elif operation.startswith("POST"):
        assert 200 in seen  # valid requests reached the worker
    # And the server keeps serving.
    assert stack.client().completions.create(model=stack.model, prompt="ok", max_tokens=1).usage.completion_tokens
