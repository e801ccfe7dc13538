"""Per-model Prometheus metrics on /metrics, and OpenTelemetry spans from HTTP (traceparent
honoured) through the gateway into the worker, with gen_ai.* attributes."""

from __future__ import annotations

import secrets

import httpx
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from swiftmesh.runtime.telemetry import add_span_processor

MESSAGES = [{"role": "user", "content": "Hello there"}]


def _scrape(stack) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{stack.http}/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _get(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_per_model_metrics(stack):
    m = stack.model
    before = _scrape(stack)
    client = stack.client()
    r1 = client.chat.completions.create(model=m, messages=MESSAGES, max_tokens=5, extra_body={"ignore_eos": True})
    chunks = list(client.completions.create(model=m, prompt="Hi", max_tokens=4, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    usage2 = chunks[-1].usage
    after = _scrape(stack)

    def delta(name, **labels):
        return _get(after, name, **labels) - _get(before, name, **labels)

    assert delta("swiftmesh_gateway_time_to_first_token_seconds_count", model=m) == 2
    assert delta("swiftmesh_gateway_time_per_output_token_seconds_count", model=m) == 2
    assert delta("swiftmesh_gateway_e2e_request_latency_seconds_count", model=m) == 2
    assert delta("swiftmesh_gateway_time_to_first_token_seconds_sum", model=m) > 0
    assert delta("swiftmesh_gateway_prompt_tokens_total", model=m) == r1.usage.prompt_tokens + usage2.prompt_tokens
    assert delta("swiftmesh_gateway_generation_tokens_total", model=m) == 9
    assert delta("swiftmesh_gateway_requests_total", model=m, endpoint="chat", status="200") == 1
    assert delta("swiftmesh_gateway_requests_total", model=m, endpoint="completions", status="200") == 1
    assert _get(after, "swiftmesh_gateway_requests_running", model=m) == 0
    assert _get(after, "swiftmesh_gateway_requests_waiting", model=m) == 0
    worker = stack.settings.gateway.workers[0]
    assert _get(after, "swiftmesh_gateway_worker_healthy", worker=worker) == 1


def test_running_gauge_during_a_stream(stack):
    m = stack.model
    stream = stack.client().chat.completions.create(model=m, messages=MESSAGES, max_tokens=400, stream=True,
                                                    extra_body={"ignore_eos": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    running = _get(_scrape(stack), "swiftmesh_gateway_requests_running", model=m)
    stream.close()
    assert running == 1


def test_traceparent_is_honoured_into_the_worker(stack):
    exporter = InMemorySpanExporter()
    add_span_processor(SimpleSpanProcessor(exporter))
    trace_id = secrets.token_hex(16)
    parent_span = secrets.token_hex(8)
    body = {"model": stack.model, "messages": MESSAGES, "max_tokens": 3, "temperature": 0, "ignore_eos": True}
    try:
        r = httpx.post(f"{stack.base_url}/chat/completions", json=body,
                       headers={"traceparent": f"00-{trace_id}-{parent_span}-01"}, timeout=60)
        finished = exporter.get_finished_spans()
    finally:
        exporter.shutdown()  # stop collecting
    assert r.status_code == 200
    usage = r.json()["usage"]
    spans = [s for s in finished if format(s.context.trace_id, "032x") == trace_id]
    by_id = {s.context.span_id: s for s in spans}
    http = [s for s in spans if s.parent is not None and format(s.parent.span_id, "016x") == parent_span]
    assert http, [s.name for s in spans]  # the HTTP server span continues the caller's trace
    chat = next(s for s in spans if s.name == f"chat {stack.model}" and s.instrumentation_scope.name == "swiftmesh.gateway")
    attrs = chat.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == stack.model
    assert attrs["gen_ai.request.max_tokens"] == 3
    assert attrs["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert tuple(attrs["gen_ai.response.finish_reasons"]) == ("length",)
    assert attrs["gen_ai.response.id"] == r.json()["id"]
    # The chat span descends from the HTTP span.
    node = chat
    while node.parent is not None and node.parent.span_id in by_id:
        node = by_id[node.parent.span_id]
    assert node in http
    # The worker's gRPC server span is in the same trace, under the gateway's client span.
    server = [s for s in spans if s.name.endswith("InferenceService/Generate") and s.kind.name == "SERVER"]
    assert server, sorted(s.name for s in spans)
    client_spans = [s for s in spans if s.name.endswith("InferenceService/Generate") and s.kind.name == "CLIENT"]
    assert server[0].parent.span_id in {s.context.span_id for s in client_spans}
    # ... which descends from the gateway's chat span; and the engine's spans are in the trace too.
    node = client_spans[0]
    while node.parent is not None and node.parent.span_id in by_id and node is not chat:
        node = by_id[node.parent.span_id]
    assert node is chat
    assert any(s.instrumentation_scope.name.startswith("swiftmesh.engines") for s in spans)
