"""OpenTelemetry tracing and structured logging shared by every service.

* :func:`setup_tracing` installs a global ``TracerProvider`` (resource ``service.name``).
  Spans are exported by OTLP only when the standard variables ask for it
  (``OTEL_TRACES_EXPORTER=otlp`` or ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``; protocol from
  ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``, ``grpc`` by default); otherwise tracing is on but
  nothing leaves the process. Tests attach an in-memory exporter with :func:`add_span_processor`.
* Trace context crosses gRPC as metadata and HTTP as ``traceparent`` (W3C Trace Context), via
  the global propagator.
* :func:`setup_logging` makes log records carry ``trace_id``/``span_id`` of the current span,
  as text or JSON lines.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_lock = threading.Lock()
_provider: TracerProvider | None = None


def _otlp_requested() -> bool:
    exporters = os.environ.get("OTEL_TRACES_EXPORTER", "")
    if exporters:
        return "otlp" in [e.strip() for e in exporters.split(",")]
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _otlp_exporter():
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    )
    if protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()


def setup_tracing(service_name: str, namespace: str = "swiftmesh") -> TracerProvider:
    """Install (once per process) and return the global TracerProvider.

    ``service_name`` becomes the ``service.name`` resource attribute unless ``OTEL_SERVICE_NAME``
    is set. A second call returns the provider already installed.
    """
    global _provider
    with _lock:
        if _provider is not None:
            return _provider
        name = os.environ.get("OTEL_SERVICE_NAME") or f"swiftmesh-{service_name}"
        provider = TracerProvider(resource=Resource.create({"service.name": name, "service.namespace": namespace}))
        if _otlp_requested():
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):  # someone (a test, another service in-process) was first
            _provider = current
        else:
            trace.set_tracer_provider(provider)
            _provider = provider
        return _provider


def flush_tracing(timeout_ms: int = 5000) -> None:
    """Export the spans still buffered (call before a process exits)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


def add_span_processor(processor: SpanProcessor) -> None:
    """Attach a span processor (e.g. SimpleSpanProcessor(InMemorySpanExporter())) to the provider."""
    setup_tracing("process").add_span_processor(processor)


def tracer(name: str) -> trace.Tracer:
    """The OpenTelemetry tracer named ``name`` (a no-op until tracing is set up)."""
    return trace.get_tracer(name)


def current_trace_id() -> str:
    """Hex trace id of the current span, or "" outside any span."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


class _TraceContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        record.trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else ""
        record.span_id = format(ctx.span_id, "016x") if ctx.is_valid else ""
        record.service = self.service
        return True


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stderr`` is when a record is written (as logging's own
    last-resort handler): one bound to the stream of set-up time writes to a closed file once that
    stream is replaced and closed (a CLI run inside a test runner, a daemonized process)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # set by StreamHandler.__init__ / setStream: always sys.stderr
        pass


def setup_logging(service: str, level: str = "INFO", fmt: str = "text") -> None:
    """Configure root logging: records carry service, trace_id and span_id; text or JSON lines
    on the process's current standard error."""
    handler = _StderrHandler()
    handler.addFilter(_TraceContextFilter(service))
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(service)s %(trace_id)s %(span_id)s %(message)s",
                rename_fields={"levelname": "level", "asctime": "time"},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(service)s %(name)s [trace=%(trace_id)s] %(message)s")
        )
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_swiftmesh", False):
            root.removeHandler(h)
    handler._swiftmesh = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
