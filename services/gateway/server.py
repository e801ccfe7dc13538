"""Gateway process: the OpenAI REST facade (uvicorn, same event loop) and the gRPC
GatewayService for administration, on the shared runtime.

    swiftmesh serve gateway        # REST on gateway.http_port (8000), gRPC admin on gateway.port

The gateway's state is its database (API keys, their usage and the registered workers; SQLite
under ``settings.gateway_state_dir`` or ``gateway.database_url``, migrated on start) and its
rate-limit windows (``gateway.redis_url``, in memory by default): run as many replicas as needed
behind a load balancer on one PostgreSQL and one Redis; a worker registered with one is routed
to by all, and a restarted gateway re-reads its workers from the database. Layers: ``api.protocol`` (OpenAI schema) -> ``api.serving*`` (handlers) ->
``router`` (worker pool, gRPC InferenceService).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from swiftmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from swiftmesh.runtime.config import ConfigError, Settings
from swiftmesh.runtime.server import Service

from .admin_servicer import GatewayServicer
from .api.app import create_app as _create_app
from .api.auth import Authenticator
from .keys import ApiKeyStore, database_url
from .ratelimit import RateLimiter
from .router import WorkerPool
from .usage import UsageLedger
from .workers import WorkerRegistry

log = logging.getLogger("swiftmesh.gateway")

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name


class EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside our event loop: signals belong to runtime.server.serve, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class HeaderDeadline(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol, closing a connection whose next request's headers have not all
    arrived ``header_timeout_s`` after it opened or after its last answer (uvicorn itself waits
    forever once any byte came: its keep-alive timer stops at the first byte). Set
    ``header_timeout_s`` on a subclass (:func:`http_config` does)."""

    header_timeout_s = 30.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def _arm(self) -> None:
        waiting_for = self.cycle
        self.loop.call_later(self.header_timeout_s, self._expired, waiting_for)

    def _expired(self, waiting_for) -> None:
        # No request began since the timer was set (the cycle is the same) and none is running.
        if self.cycle is waiting_for and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()


def http_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    """uvicorn's configuration for the gateway: slow clients bounded by
    ``gateway.request_read_timeout_s`` (headers here, the body in :class:`.api.bounds.BodyLimit`),
    5 s idle keep-alive, at most 64 KiB of unfinished headers (h11), ``gateway.max_connections``
    connections and requests at once (503 above); behind a load balancer the client is the first
    X-Forwarded-For address a trusted proxy gives."""
    gw = settings.gateway
    protocol = type("GatewayHTTPProtocol", (HeaderDeadline,), {"header_timeout_s": gw.request_read_timeout_s})
    return uvicorn.Config(app, host=gw.host, port=gw.http_port, log_level="warning", lifespan="off",
                          timeout_graceful_shutdown=None, proxy_headers=True,
                          forwarded_allow_ips=list(gw.trusted_proxies), http=protocol,
                          timeout_keep_alive=5, h11_max_incomplete_event_size=64 * 1024,
                          limit_concurrency=gw.max_connections)


def _instrument(app: FastAPI) -> None:
    """OpenTelemetry server spans for HTTP requests (W3C ``traceparent`` honoured)."""
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    except ImportError:  # pragma: no cover - the serve extra installs it
        log.warning("opentelemetry-instrumentation-fastapi is not installed: no HTTP spans")
        return
    FastAPIInstrumentor.instrument_app(app, excluded_urls="health,metrics", exclude_spans=["send", "receive"])


def create_app(settings: Settings, pool: WorkerPool | None = None, keys: ApiKeyStore | None = None,
               limiter: RateLimiter | None = None, usage: UsageLedger | None = None) -> FastAPI:
    """The REST application (for embedding or tests); the pool (and the usage ledger's
    flushing) is not started here."""
    pool = pool or WorkerPool(settings)
    keys = keys or ApiKeyStore(database_url(settings.gateway.database_url, settings.gateway_state_dir))
    limiter = limiter or RateLimiter(settings.gateway.redis_url or "memory://")
    app = _create_app(pool, keys, limiter, Authenticator(settings, keys, limiter, usage), limits=settings.gateway)
    _instrument(app)
    return app


def _port_taken(settings: Settings) -> str:
    gw = settings.gateway
    return (f"gateway: cannot listen for HTTP on {gw.host}:{gw.http_port}: the port is in use (another server "
            "runs there) or the host is not an address of this machine; choose another port with "
            "SWIFTMESH_GATEWAY__HTTP_PORT (0 for any free port) or stop the other server")


def create_service(settings: Settings) -> Service:
    """The gateway's Service description: gRPC admin service plus the HTTP server as hooks.

    On start: the worker pool polls the configured workers once, then the HTTP server binds
    ``gateway.host:gateway.http_port`` (port 0 picks a free one; the bound port is then in
    ``service.http_port``). On stop: HTTP drains, the pool stops, the key store closes.
    An HTTP port that cannot be bound is a ConfigError naming ``SWIFTMESH_GATEWAY__HTTP_PORT``
    (``swiftmesh serve gateway`` exits 2), raised from the bind itself rather than a check before it
    (a check without SO_REUSEADDR would refuse a port that only has TIME_WAIT connections).
    """
    service = Service("gateway", endpoint=settings.gateway)
    keys = ApiKeyStore(database_url(settings.gateway.database_url, settings.gateway_state_dir))
    pool = WorkerPool(settings, WorkerRegistry(keys.engine))
    limiter = RateLimiter(settings.gateway.redis_url or "memory://")
    usage = UsageLedger(keys.engine)
    service.add(GatewayServicer(pool, keys, limiter, settings, usage),
                gateway_pb2_grpc.add_GatewayServiceServicer_to_server, SERVICE_NAME)
    app = create_app(settings, pool, keys, limiter, usage)
    http = EmbeddedUvicorn(http_config(app, settings))
    task: list[asyncio.Task] = []
    service.pool = pool  # type: ignore[attr-defined]
    service.keys = keys  # type: ignore[attr-defined]
    service.usage = usage  # type: ignore[attr-defined]
    service.app = app  # type: ignore[attr-defined]
    service.http_port = settings.gateway.http_port  # type: ignore[attr-defined]

    async def serve_http() -> None:
        # uvicorn logs why it cannot bind and calls sys.exit: a SystemExit leaving a task escapes
        # the event loop itself, skipping the gRPC server's stop (the process then segfaulted).
        try:
            await http.serve()
        except SystemExit:
            raise ConfigError(_port_taken(settings)) from None

    async def start_http() -> None:
        await pool.start()
        usage.start()
        task.append(asyncio.create_task(serve_http()))
        while not http.started:
            if task[0].done():
                task[0].result()
                raise ConfigError(_port_taken(settings))
            await asyncio.sleep(0.02)
        for server in http.servers:
            for sock in server.sockets:
                service.http_port = sock.getsockname()[1]  # type: ignore[attr-defined]
                break
        log.info("gateway: OpenAI API on http://%s:%s/v1", settings.gateway.host, service.http_port)  # type: ignore[attr-defined]

    async def stop_http() -> None:
        http.should_exit = True
        if task:
            try:
                await asyncio.wait_for(task[0], timeout=max(settings.shutdown_grace_s, 1.0))
            except (TimeoutError, Exception):  # noqa: BLE001
                http.force_exit = True
        await pool.stop()
        await usage.stop()
        keys.close()

    service.on_start.append(start_http)
    service.on_stop.append(stop_http)
    return service
