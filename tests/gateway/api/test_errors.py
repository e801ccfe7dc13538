"""Errors in OpenAI's envelope with the right status (400 naming the parameter, 401, 403, 404,
429 with Retry-After), and the gateway keeps serving after each."""

from __future__ import annotations

import hashlib
import sqlite3

import httpx
import openai
import pytest

from tests.gateway.api.conftest import start_extra_gateway

MESSAGES = [{"role": "user", "content": "Hello"}]


def _assert_ok(stack, client=None) -> None:
    client = client or stack.client()
    r = client.chat.completions.create(model=stack.model, messages=MESSAGES, max_tokens=2)
    assert r.choices[0].finish_reason in ("length", "stop")


def _error(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


CHAT_400 = [
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs
    ({"tool_choice": "sometimes", "tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice"),
    ({"tool_choice": "auto", "tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "g"}},
      "tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice.function.name"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"temperature": 3}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 0}, "n"),
    ({"n": "two"}, "n"),
    ({"presence_penalty": -2.5}, "presence_penalty"),
    ({"logit_bias": {"not-a-token": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 10_000_000}, "max_tokens"),
    ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    ({"stop": ["ok", ""]}, "stop"),
]


@pytest.mark.parametrize(("extra", "param"), CHAT_400, ids=[p for _, p in CHAT_400])
def test_chat_400_names_the_parameter(stack, extra, param):
    body = {"model": stack.model, "messages": MESSAGES, **extra}
    r = httpx.post(f"{stack.base_url}/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param, err


COMPLETION_400 = [
    ({"max_tokens": 0}, "max_tokens"),  # only with echo
    ({"best_of": 3, "n": 1}, "best_of"),
    ({"suffix": "end"}, "suffix"),
    ({"prompt": []}, "prompt"),
    ({"logprobs": 21}, "logprobs"),
    ({"prompt": [-1, 2]}, "prompt"),
]


@pytest.mark.parametrize(("extra", "param"), COMPLETION_400, ids=[p for _, p in COMPLETION_400])
def test_completions_400_names_the_parameter(stack, extra, param):
    body = {"model": stack.model, "prompt": "Hi", **extra}
    r = httpx.post(f"{stack.base_url}/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text


def test_sdk_sees_bad_request_and_server_keeps_working(stack):
    client = stack.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=stack.model, messages=MESSAGES, logprobs=True, top_logprobs=21)
    assert _error(e.value)["param"] == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=stack.model, messages=MESSAGES, stream_options={"include_usage": True})
    assert _error(e.value)["param"] == "stream_options"
    _assert_ok(stack, client)


def test_malformed_bodies_are_400(stack):
    url = f"{stack.base_url}/chat/completions"
    for kwargs in ({"content": b"{not json", "headers": {"content-type": "application/json"}},
                   {"json": [1, 2]}, {"content": b"", "headers": {"content-type": "application/json"}},
                   {"json": {"model": stack.model}}):
        r = httpx.post(url, timeout=30, **kwargs)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.post(url, json={"model": stack.model}, timeout=30).json()["error"]["param"] == "messages"
    _assert_ok(stack)


def test_unknown_model_is_404(stack):
    client = stack.client()
    for call in (
        lambda: client.chat.completions.create(model="no-such-model", messages=MESSAGES),
        lambda: client.completions.create(model="no-such-model", prompt="x"),
        lambda: client.models.retrieve("no-such-model"),
    ):
        with pytest.raises(openai.NotFoundError) as e:
            call()
        err = _error(e.value)
        assert err["code"] == "model_not_found" and err["param"] == "model"
    # The stream flavour fails before the stream starts, with a status too.
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, stream=True)
    _assert_ok(stack, client)


def test_unknown_route_and_method_in_envelope(stack):
    r = httpx.get(f"{stack.base_url}/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    r = httpx.get(f"{stack.base_url}/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


@pytest.fixture(scope="module")
def secured(stack, tmp_path_factory):
    other = start_extra_gateway(stack, tmp_path_factory.mktemp("secured"), auth_token="service-token",
                                gateway={"require_api_key": True})
    yield other
    stack.run(other.gateway.stop(0.5))


def test_api_keys_401_and_hashed_storage(secured):
    keys = secured.gateway_service.keys
    key, secret = keys.create("tester")
    # No key / a wrong key: 401 in the envelope; the key and the service token work.
    r = httpx.post(f"{secured.base_url}/chat/completions", json={"model": secured.model, "messages": MESSAGES})
    assert r.status_code == 401
    assert r.json()["error"]["code"] is None and "API key" in r.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError) as e:
        secured.client(api_key="sk-wrong-key-123456").chat.completions.create(model=secured.model, messages=MESSAGES)
    err = _error(e.value)
    assert err["code"] == "invalid_api_key" and "sk-wrong-key-123456" not in err["message"]
    with pytest.raises(openai.AuthenticationError):
        secured.client(api_key="sk-wrong").models.list()
    _assert_ok(secured, secured.client(api_key=secret))
    _assert_ok(secured, secured.client(api_key="service-token"))
    # Deleted keys stop working.
    keys.delete(key.key_id)
    with pytest.raises(openai.AuthenticationError):
        secured.client(api_key=secret).chat.completions.create(model=secured.model, messages=MESSAGES)
    # Only the hash is stored.
    db = secured.settings.gateway_state_dir / "gateway.db"
    _, secret2 = keys.create("another")
    raw = b"".join(p.read_bytes() for p in db.parent.glob("gateway.db*"))
    assert secret2.encode() not in raw
    with sqlite3.connect(db) as conn:
        hashes = [row[0] for row in conn.execute("SELECT secret_sha256 FROM api_keys")]
    assert hashlib.sha256(secret2.encode()).hexdigest() in hashes


def test_requests_per_minute_429_with_retry_after(secured):
    _, secret = secured.gateway_service.keys.create("rpm", requests_per_minute=2)
    client = secured.client(api_key=secret)
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(model=secured.model, messages=MESSAGES, max_tokens=1)
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model=secured.model, messages=MESSAGES, max_tokens=1)
    assert e.value.status_code == 429
    retry_after = int(e.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    err = _error(e.value)
    assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
    # Other keys (and the server) keep working.
    _assert_ok(secured, secured.client(api_key="service-token"))


def test_tokens_per_minute_429(secured):
    _, secret = secured.gateway_service.keys.create("tpm", tokens_per_minute=10)
    client = secured.client(api_key=secret)
    r = client.chat.completions.create(model=secured.model, messages=MESSAGES, max_tokens=4)
    assert r.usage.total_tokens > 10  # this one was admitted, and used up the minute
    with pytest.raises(openai.RateLimitError) as e:
        client.completions.create(model=secured.model, prompt="x", max_tokens=1)
    assert _error(e.value)["type"] == "tokens" and int(e.value.response.headers["retry-after"]) >= 1
    _assert_ok(secured, secured.client(api_key="service-token"))


def test_admin_endpoint_needs_an_admin_key(secured):
    keys = secured.gateway_service.keys
    _, user = keys.create("user")
    _, admin = keys.create("admin", admin=True)
    url = f"{secured.base_url}/admin/adapters"
    body = {"adapter": "models/does-not-exist"}
    assert httpx.post(url, json=body).status_code == 401
    r = httpx.post(url, json=body, headers={"authorization": f"Bearer {user}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_permissions"
    for token in (admin, "service-token"):
        r = httpx.get(f"{secured.base_url}/admin/workers", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["data"][0]["healthy"] is True
    r = httpx.delete(f"{secured.base_url}/admin/adapters/no-such-adapter", headers={"authorization": f"Bearer {admin}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_model_without_chat_template_is_a_clear_400(stack):
    client = stack.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=stack.raw_model, messages=MESSAGES, max_tokens=2)
    err = _error(e.value)
    assert err["code"] == "model_has_no_chat_template" and err["param"] == "model"
    assert "chat template" in err["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=stack.raw_model, messages=MESSAGES, max_tokens=2, stream=True)
    # The model still serves plain completions, and the other model chat.
    assert client.completions.create(model=stack.raw_model, prompt="Hello", max_tokens=2).usage.completion_tokens
    _assert_ok(stack, client)
