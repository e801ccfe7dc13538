"""OpenTelemetry spans of generation requests, with the ``gen_ai.*`` semantic-convention
attributes (https://opentelemetry.io/docs/specs/semconv/gen-ai/): one CLIENT span per request
from the gateway to the worker it was routed to."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .protocol import ChatCompletionRequest, CompletionRequest
from .translate import Usage

_tracer = trace.get_tracer("swiftmesh.gateway")


def start_span(operation: str, req: ChatCompletionRequest | CompletionRequest, request_id: str) -> Span:
    """A span ``"{operation} {model}"`` with the request's ``gen_ai.request.*`` attributes
    (``operation`` is ``"chat"`` or ``"text_completion"``). The caller ends it with :func:`end_span`."""
    span = _tracer.start_span(f"{operation} {req.model}", kind=SpanKind.CLIENT)
    if span.is_recording():
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": "swiftmesh",
            "gen_ai.request.model": req.model,
            "gen_ai.response.id": request_id,
            "gen_ai.request.choice.count": req.n or 1,
            "gen_ai.request.stream": bool(req.stream),
        }
        max_tokens = req.output_limit if isinstance(req, ChatCompletionRequest) else req.max_tokens
        for key, value in (("max_tokens", max_tokens), ("temperature", req.temperature), ("top_p", req.top_p),
                           ("top_k", req.top_k), ("seed", req.seed),
                           ("frequency_penalty", req.frequency_penalty), ("presence_penalty", req.presence_penalty)):
            if value is not None:
                attrs[f"gen_ai.request.{key}"] = value
        if req.stop_list():
            attrs["gen_ai.request.stop_sequences"] = req.stop_list()
        fmt = getattr(req, "response_format", None)
        attrs["gen_ai.output.type"] = "json" if fmt is not None and fmt.type != "text" else "text"
        span.set_attributes(attrs)
    return span


def end_span(span: Span, usage: Usage | None, reasons: list[str], worker: str | None,
             error: BaseException | None = None) -> None:
    """End ``span`` with the token usage, finish reasons, the worker's address (``host:port``)
    and, for a failed request, an ERROR status naming ``error``'s type."""
    if span.is_recording():
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.prompt)
            span.set_attribute("gen_ai.usage.output_tokens", usage.completion)
        if reasons:
            span.set_attribute("gen_ai.response.finish_reasons", reasons)
        if worker:
            span.set_attribute("swiftmesh.worker", worker)
            host, _, port = worker.rpartition(":")
            span.set_attribute("server.address", host)
            if port.isdigit():
                span.set_attribute("server.port", int(port))
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, str(error)))
            span.set_attribute("error.type", type(error).__name__)
    span.end()
