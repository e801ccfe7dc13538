"""gRPC aio interceptors shared by every service.

Server side, outermost first:
  1. OpenTelemetry (``opentelemetry-instrumentation-grpc``): a server span per call, parented
     on the caller's trace context from the metadata.
  2. :class:`StatusInterceptor`: maps :class:`SwiftMeshError` to a status with google.rpc
     details, unexpected exceptions to INTERNAL, writes an access log line and Prometheus
     metrics per call (refused calls included: it sits outside auth).
  3. :class:`AuthInterceptor`: the shared token (``authorization: Bearer <token>``); calls
     without it get UNAUTHENTICATED. Health and reflection stay open (probes, grpcurl).

Client side: :func:`call_defaults_interceptors` add the auth metadata and a deadline to calls of all four kinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import logging
import time
from collections.abc import Callable, Sequence

import grpc
from grpc_status import rpc_status
from prometheus_client import Counter, Histogram

from swiftmesh.runtime.errors import Internal, SwiftMeshError, Unauthenticated

log = logging.getLogger("swiftmesh.access")

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

RPC_HANDLED = Counter(
    "swiftmesh_grpc_server_handled_total",
    "gRPC calls completed, by service, method and status code.",
    ["service", "grpc_service", "grpc_method", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "swiftmesh_grpc_server_handling_seconds",
    "Time to complete a gRPC call (for streams: until the stream ends), seconds.",
    ["service", "grpc_service", "grpc_method"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600, 3600),
)


def _split(method: str) -> tuple[str, str]:
    _, service, name = method.split("/", 2) if method.count("/") >= 2 else ("", "", method)
    return service, name


async def abort_with_error(context: grpc.aio.ServicerContext, err: SwiftMeshError) -> None:
    """Abort the call with the error's status code, message and google.rpc details."""
    status = rpc_status.to_status(err.to_status_proto())
    await context.abort(status.code, status.details, status.trailing_metadata)


def _rewrap(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Callable], Callable],
    streaming: Callable[[Callable], Callable],
) -> grpc.RpcMethodHandler:
    """A handler of the same kind whose behaviour is wrapped (unary or streaming response)."""
    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kw)
    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **kw)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every call except health and reflection.

    The comparison is constant-time. A missing or wrong token gives UNAUTHENTICATED with
    reason MISSING_CREDENTIALS or INVALID_CREDENTIALS.
    """

    def __init__(self, token: str, open_prefixes: Sequence[str] = OPEN_METHOD_PREFIXES) -> None:
        self._expected = f"Bearer {token}".encode()
        self._open = tuple(open_prefixes)

    async def intercept_service(self, continuation, handler_call_details):
        """Pass open methods and calls with the right token; give any other call a handler that aborts UNAUTHENTICATED."""
        if handler_call_details.method.startswith(self._open):
            return await continuation(handler_call_details)
        got = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                got = value if isinstance(value, str) else value.decode()
        if got and hmac.compare_digest(got.encode(), self._expected):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        err = (
            Unauthenticated("invalid token in the authorization metadata", reason="INVALID_CREDENTIALS")
            if got
            else Unauthenticated(
                "missing authorization metadata: expected 'authorization: Bearer <token>'",
                reason="MISSING_CREDENTIALS",
            )
        )

        def reject(_behavior):
            async def behavior(request, context):
                await abort_with_error(context, err)

            return behavior

        def reject_stream(_behavior):
            # an async generator, as a streamed response is: the tracing interceptor iterates it
            # (a coroutine here ended the call UNKNOWN, which clients retried)
            async def behavior(request, context):
                await abort_with_error(context, err)
                yield  # pragma: no cover - abort raises

            return behavior

        return _rewrap(handler, reject, reject_stream)


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Maps domain errors to statuses, logs each call and records Prometheus metrics."""

    def __init__(self, service: str) -> None:
        self.service = service

    async def intercept_service(self, continuation, handler_call_details):
        """Wrap the handler so domain errors become statuses with details, and every call is logged and counted."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        grpc_service, grpc_method = _split(method)
        service = self.service

        def finish(context, start: float, code: str, peer: str = "") -> None:
            elapsed = time.perf_counter() - start
            RPC_HANDLED.labels(service, grpc_service, grpc_method, code).inc()
            RPC_SECONDS.labels(service, grpc_service, grpc_method).observe(elapsed)
            log.info("%s %s %.1fms peer=%s", method, code, elapsed * 1000, peer)

        def peer_of(context) -> str:
            # Read at the start of the call: context.peer() on a call whose connection was cut
            # mid-stream crashes the process (segfault in grpc's cython layer, grpcio 1.85).
            try:
                return context.peer() if hasattr(context, "peer") else ""
            except Exception:  # noqa: BLE001
                return ""

        async def translate(context, exc: BaseException) -> str:
            if isinstance(exc, SwiftMeshError):
                await abort_with_error(context, exc)
            log.exception("unhandled error in %s", method, exc_info=exc)
            await abort_with_error(context, Internal(f"internal error in {grpc_method}: {type(exc).__name__}: {exc}"))
            return "INTERNAL"  # not reached: abort raises

        def code_of(context) -> str:
            try:
                c = context.code()
            except Exception:  # noqa: BLE001 - older contexts
                c = None
            if isinstance(c, grpc.StatusCode):
                return c.name
            return "OK" if c in (None, 0) else str(c)

        @contextlib.asynccontextmanager
        async def observed(context):
            """One call's outcome: domain errors become statuses, every call is logged and counted."""
            start = time.perf_counter()
            peer = peer_of(context)
            code = "OK"
            try:
                yield
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except grpc.aio.AbortError:
                code = code_of(context)
                raise
            except SwiftMeshError as e:
                code = e.code_name
                await translate(context, e)
            except Exception as e:  # noqa: BLE001
                code = "INTERNAL"
                await translate(context, e)
            finally:
                finish(context, start, code if code != "OK" else code_of(context), peer)

        def unary(behavior):
            async def wrapped(request, context):
                async with observed(context):
                    return await behavior(request, context)

            return wrapped

        def streaming(behavior):
            async def wrapped(request, context):
                async with observed(context):
                    result = behavior(request, context)
                    if inspect.isasyncgen(result):
                        async for item in result:
                            yield item
                    else:  # a coroutine that writes with context.write()
                        await result

            return wrapped

        return _rewrap(handler, unary, streaming)


class _CallDefaults:
    """Adds ``authorization`` metadata and a default deadline to a call's details."""

    def __init__(self, token: str | None, default_timeout: float) -> None:
        self._token = token
        self._default_timeout = default_timeout

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(tuple(details.metadata) if details.metadata else ()))
        if self._token and "authorization" not in metadata:
            metadata.add("authorization", f"Bearer {self._token}")
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=details.timeout if details.timeout is not None else self._default_timeout,
            metadata=metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )


class _UnaryUnaryDefaults(_CallDefaults, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _UnaryStreamDefaults(_CallDefaults, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _StreamUnaryDefaults(_CallDefaults, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


class _StreamStreamDefaults(_CallDefaults, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


def call_defaults_interceptors(
    token: str | None, unary_timeout: float, stream_timeout: float
) -> list[grpc.aio.ClientInterceptor]:
    """Client side: ``authorization: Bearer <token>`` metadata (when a token is set) and a
    deadline on every call of all four RPC kinds.

    ``unary_timeout`` (seconds) applies to calls with a unary response, ``stream_timeout`` to
    calls with a streamed response (downloads, watches); an explicit ``timeout=`` wins.

    One interceptor object per kind: grpc.aio files an interceptor under the FIRST of the four
    interceptor classes it is an instance of, so one object implementing all four would only ever
    see unary-unary calls.
    """
    return [
        _UnaryUnaryDefaults(token, unary_timeout),
        _UnaryStreamDefaults(token, stream_timeout),
        _StreamUnaryDefaults(token, unary_timeout),
        _StreamStreamDefaults(token, stream_timeout),
    ]
