"""Domain pieces of the gateway tested directly: rate limits, the key store, routing choice,
parameter names of validation errors, request translation."""

from __future__ import annotations

import pytest

from swiftmesh.clients.inference import ServedModel
from swiftmesh.runtime.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from swiftmesh.services.gateway.api.errors import param_from_loc
from swiftmesh.services.gateway.api.protocol import ChatCompletionRequest, CompletionRequest
from swiftmesh.services.gateway.api.translate import chat_generate_request, completion_generate_requests
from swiftmesh.services.gateway.keys import ApiKeyStore
from swiftmesh.services.gateway.ratelimit import RateLimiter
from swiftmesh.services.gateway.router import WorkerPool
from swiftmesh.services.gateway.workers import Worker, check_address, worker_id


class Clock:
    """A stand-in for the ``time`` module (``time()``) of the limits storage and the limiter."""

    def __init__(self) -> None:
        self.t = 1000.0

    def time(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    import limits.storage.memory

    import swiftmesh.services.gateway.ratelimit

    c = Clock()
    monkeypatch.setattr(limits.storage.memory, "time", c)
    monkeypatch.setattr(swiftmesh.services.gateway.ratelimit, "time", c)
    return c


def test_requests_per_minute_window_slides(clock):
    rl = RateLimiter()
    assert rl.acquire("k", 2, 0).requests == 1
    clock.t += 10
    assert rl.acquire("k", 2, 0).requests == 0
    with pytest.raises(ResourceExhausted) as e:
        rl.acquire("k", 2, 0)
    assert e.value.retry_after == pytest.approx(50.0)  # the first request leaves the window at t+60
    assert e.value.metadata["openai_type"] == "requests"
    clock.t += 50.01
    rl.acquire("k", 2, 0)  # one slot free again
    rl.acquire("other", 2, 0)  # keys are independent


def test_tokens_per_minute_counts_finished_requests(clock):
    rl = RateLimiter()
    rl.acquire("k", 0, 100)
    rl.record_tokens("k", 60, 100)
    clock.t += 5
    rl.acquire("k", 0, 100)  # 60 < 100
    rl.record_tokens("k", 60, 100)
    with pytest.raises(ResourceExhausted) as e:
        rl.acquire("k", 0, 100)
    assert e.value.metadata["openai_type"] == "tokens"
    assert e.value.retry_after == pytest.approx(55.0)  # the first 60 leave at t+60, then 60 < 100
    clock.t += 55.01
    rl.acquire("k", 0, 100)
    assert rl.acquire("free", 0, 0).requests == -1  # unlimited
    rl.forget("k")
    assert rl.acquire("k", 1, 100).tokens == 100


def test_key_store(tmp_path):
    store = ApiKeyStore(tmp_path / "keys.sqlite")
    key, secret = store.create("ci", requests_per_minute=5, tokens_per_minute=1000, admin=True)
    assert secret.startswith("sk-") and len(secret) > 40 and secret.startswith(key.prefix)
    assert store.verify(secret) == key
    assert store.verify(secret + "x") is None and store.verify("not-a-key") is None
    others = [store.create(f"k{i}")[0] for i in range(3)]
    page1, token = store.list(page_size=2)
    page2, end = store.list(page_size=2, page_token=token)
    assert [k.key_id for k in page1 + page2] == [key.key_id] + [k.key_id for k in others] and end == ""
    # A second store on the same file (another gateway process) sees the same keys.
    assert ApiKeyStore(tmp_path / "keys.sqlite").verify(secret) == key
    store.delete(key.key_id)
    assert store.verify(secret) is None
    with pytest.raises(NotFound):
        store.delete(key.key_id)
    with pytest.raises(InvalidArgument) as e:
        store.create("bad", requests_per_minute=-1)
    assert e.value.field_violations[0].field == "requests_per_minute"
    with pytest.raises(InvalidArgument):
        store.list(page_token="nope")


def _worker(address, models, running=0, waiting=0, healthy=True):
    w = Worker(address, reachable=healthy, ready=True, running=running, waiting=waiting)
    w.models = {m: ServedModel(id=m) for m in models}
    return w


def test_routing_picks_the_least_loaded_healthy_worker(make_settings):
    pool = WorkerPool(make_settings())
    a = _worker("10.0.0.1:1", ["m"], running=5)
    b = _worker("10.0.0.2:1", ["m"], running=1, waiting=1)
    c = _worker("10.0.0.3:1", ["m"], healthy=False)
    d = _worker("10.0.0.4:1", ["other"])
    for w in (a, b, c, d):
        pool._workers[w.address] = w
    assert pool.select("m") is b
    b.inflight = 4  # sent since the last poll
    assert pool.select("m") is a
    assert pool.select("m", exclude=[a.address]) is b
    with pytest.raises(Unavailable):
        pool.select("m", exclude=[a.address, b.address])  # c serves it but is down
    with pytest.raises(NotFound) as e:
        pool.select("nope")
    assert e.value.metadata["openai_code"] == "model_not_found"
    a.reachable = b.reachable = False
    with pytest.raises(Unavailable):
        pool.select("m")
    assert {m.id for m in pool.served_models()} == {"other"}


def test_worker_addresses():
    assert check_address(" 127.0.0.1:50054 ") == "127.0.0.1:50054"
    assert check_address("worker-0.svc:8000") == "worker-0.svc:8000"
    assert check_address("[::1]:9") == "[::1]:9"
    for bad in ("nohost", "host:", "host:0", "host:99999", "a b:1"):
        with pytest.raises(InvalidArgument):
            check_address(bad)
    assert worker_id("127.0.0.1:50054") == "127-0-0-1-50054"


@pytest.mark.parametrize(("loc", "param"), [
    (("body", "top_logprobs"), "top_logprobs"),
    (("body", "messages", 0, "content"), "messages[0].content"),
    (("body", "tool_choice", "literal['none','auto','required']"), "tool_choice"),
    (("body", "tool_choice", "NamedToolChoice", "function", "name"), "tool_choice.function.name"),
    (("body", "prompt", "list[int]", 2), "prompt[2]"),
    (("body", "stop", "str"), "stop"),
    (("body",), None),
])
def test_param_names_from_validation_locations(loc, param):
    assert param_from_loc(loc) == param


def test_chat_translation():
    info = ServedModel(id="m", has_chat_template=True, max_model_len=100)
    req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                                   {"type": "text", "text": "b"}]}],
                                max_completion_tokens=7, temperature=0, stop="x", logprobs=True, top_logprobs=2,
                                seed=3, logit_bias={"5": -100}, top_k=4, response_format={"type": "json_object"})
    g = chat_generate_request(req, info, "rid")
    assert g.chat is not None and g.text is None and g.token_ids is None and g.chat.messages[0].content == "ab"
    s = g.sampling
    assert (s.max_tokens, s.temperature, list(s.stop), s.logprobs, s.seed, dict(s.logit_bias), s.top_k) == \
        (7, 0.0, ["x"], 2, 3, {5: -100.0}, 4)
    assert s.structured_output.json_object and s.top_p is None
    # No logprobs asked: None; prompt logprobs never for chat.
    g = chat_generate_request(ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "a"}]), info, "r")
    assert g.sampling.logprobs is None and g.sampling.prompt_logprobs is None and g.sampling.max_tokens == 0


def test_completion_translation():
    info = ServedModel(id="m", max_model_len=100)
    reqs = completion_generate_requests(
        CompletionRequest(model="m", prompt=[[1, 2], [3]], echo=True, logprobs=1, max_tokens=0), info, "rid")
    assert [r.token_ids for r in reqs] == [[1, 2], [3]]
    assert [r.request_id for r in reqs] == ["rid-0", "rid-1"]
    assert all(r.echo and r.sampling.prompt_logprobs == 1 and r.sampling.max_tokens == 1 for r in reqs)
    (r,) = completion_generate_requests(CompletionRequest(model="m", prompt="hi"), info, "x")
    assert r.text == "hi" and r.sampling.max_tokens == 16 and r.sampling.prompt_logprobs is None
