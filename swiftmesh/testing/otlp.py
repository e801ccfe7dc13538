"""A minimal OTLP/gRPC trace collector on loopback, for tests that follow a trace across
service processes (the processes export with the standard ``OTEL_*`` variables)."""

from __future__ import annotations

import threading
from collections import defaultdict
from concurrent import futures
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class CollectedSpan:
    service: str  # the resource's service.name
    trace_id: str  # 32 hex digits
    span_id: str
    parent_span_id: str
    name: str
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind
    attributes: tuple[tuple[str, str], ...]


class _Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink: OtlpCollector) -> None:
        self.sink = sink

    def Export(self, request, context):
        for rs in request.resource_spans:
            service = next(
                (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "unknown"
            )
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs = tuple(
                        (a.key, str(getattr(a.value, a.value.WhichOneof("value")) if a.value.WhichOneof("value") else ""))
                        for a in s.attributes
                    )
                    self.sink._add(CollectedSpan(
                        service=service, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(), name=s.name, kind=s.kind, attributes=attrs,
                    ))
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpCollector:
    """Receives OTLP/gRPC trace exports on ``127.0.0.1:<port>``; ``env()`` gives the variables
    that make SwiftMesh processes export to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans: list[CollectedSpan] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Receiver(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    def _add(self, span: CollectedSpan) -> None:
        with self._lock:
            self.spans.append(span)

    def start(self) -> OtlpCollector:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(0)

    def env(self) -> dict[str, str]:
        return {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "500",
        }

    def traces(self) -> dict[str, list[CollectedSpan]]:
        """Spans grouped by trace id."""
        out: dict[str, list[CollectedSpan]] = defaultdict(list)
        with self._lock:
            for s in self.spans:
                out[s.trace_id].append(s)
        return dict(out)
