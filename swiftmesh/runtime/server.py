"""The gRPC aio server bootstrap every SwiftMesh service runs on.

A service describes itself as a :class:`Service` (its servicers, start/stop hooks); the
runtime adds the health service (overall and per gRPC service), reflection, the interceptors
(tracing, auth, status mapping, access log, metrics), TLS or mutual TLS, message size and
keepalive settings, a Prometheus ``/metrics`` endpoint, and a graceful drain on SIGTERM/SIGINT:
health turns NOT_SERVING, the server stops accepting calls, in-flight calls get
``shutdown_grace_s`` to finish, then are cancelled.

    service = Service("hub", endpoint=settings.hub)
    service.add(HubServicer(...), hub_pb2_grpc.add_HubServiceServicer_to_server, "swiftmesh.hub.v1.HubService")
    await serve(service, settings)        # blocks until SIGTERM/SIGINT, then drains
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from swiftmesh.runtime.config import Endpoint, Settings
from swiftmesh.runtime.host import is_loopback
from swiftmesh.runtime.interceptors import AuthInterceptor, StatusInterceptor
from swiftmesh.runtime.metrics import start_metrics_server
from swiftmesh.runtime.telemetry import flush_tracing, setup_tracing

log = logging.getLogger("swiftmesh.server")

Hook = Callable[[], Awaitable[None]]


def grpc_options(settings: Settings) -> list[tuple[str, Any]]:
    """Channel arguments shared by servers and clients: message size and keepalive."""
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ]


class HealthReporter:
    """Per-service health, backed by grpc's HealthServicer (``grpc.health.v1``).

    The overall status (service "") is SERVING only when every registered service is.
    """

    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        self._status: dict[str, bool] = {}

    async def _apply(self, name: str, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        result = self.servicer.set(name, status)
        if asyncio.iscoroutine(result):
            await result

    async def set(self, service: str, serving: bool) -> None:
        """Set one gRPC service's status (full name, e.g. "swiftmesh.hub.v1.HubService")."""
        self._status[service] = serving
        await self._apply(service, serving)
        await self._apply("", all(self._status.values()))

    async def set_all(self, serving: bool) -> None:
        """Set every registered service (and the overall status) to ``serving``."""
        for name in list(self._status):
            self._status[name] = serving
            await self._apply(name, serving)
        await self._apply("", serving)

    def is_serving(self, service: str = "") -> bool:
        """Whether ``service`` (or, with "", every registered service) is SERVING."""
        if service:
            return self._status.get(service, False)
        return bool(self._status) and all(self._status.values())


@dataclass
class Service:
    """A service process's description: what the runtime serves and runs around it.

    Attributes:
        name: short service name ("hub", "trainer", ...), used in logs, metrics and traces.
        endpoint: where it listens (host, port, metrics_port).
        on_start / on_stop: async hooks run after the server is bound / after it drained.
        serving_on_start: mark each service SERVING once started (a service that needs
            warm-up sets False and calls ``health.set`` itself).
    """

    name: str
    endpoint: Endpoint
    registrations: list[tuple[Any, Callable[[Any, grpc.aio.Server], None], str]] = field(default_factory=list)
    on_start: list[Hook] = field(default_factory=list)
    on_stop: list[Hook] = field(default_factory=list)
    health: HealthReporter = field(default_factory=HealthReporter)
    serving_on_start: bool = True

    def add(self, servicer: Any, add_fn: Callable[[Any, grpc.aio.Server], None], full_name: str) -> None:
        """Register a servicer with its generated ``add_XServicer_to_server`` and full service name."""
        self.registrations.append((servicer, add_fn, full_name))


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# Tokens shipped as examples (deploy/k8s/secret.yaml, deploy/compose/.env.example): a service
# started with one logs a WARNING, as it does for a token shorter than MIN_TOKEN_CHARS.
PLACEHOLDER_TOKENS = frozenset({"change-me", "changeme", "secret", "token"})
MIN_TOKEN_CHARS = 16


def _token(settings: Settings) -> str:
    """The service token, "" when unset or blank (a blank token authenticates nobody)."""
    return settings.auth_token.get_secret_value().strip() if settings.auth_token is not None else ""


def warn_weak_token(name: str, settings: Settings) -> None:
    """Log a WARNING when the service token is a known placeholder or shorter than 16 characters."""
    token = _token(settings)
    if not token:
        return
    if token.lower() in PLACEHOLDER_TOKENS:
        log.warning("%s: SWIFTMESH_AUTH_TOKEN is the placeholder %r from the examples: anyone who read "
                    "them can call this service; set a long random token", name, token)
    elif len(token) < MIN_TOKEN_CHARS:
        log.warning("%s: SWIFTMESH_AUTH_TOKEN is only %d characters (fewer than %d): it can be guessed; "
                    "set a long random token", name, len(token), MIN_TOKEN_CHARS)


def check_exposure(name: str, host: str, settings: Settings) -> None:
    """Secure by default: a server may listen beyond loopback only with a service token or mutual TLS.

    Raises:
        ConfigError: ``host`` is not a loopback address and neither a non-blank ``auth_token``
            nor ``tls.require_client_cert`` is set; or ``name`` is "gateway" and its OpenAI API
            would be anonymous and unlimited (``gateway.require_api_key`` false,
            ``gateway.anonymous_requests_per_minute`` 0) without ``gateway.allow_anonymous_public``.
            The message says which setting to add.
    """
    from swiftmesh.runtime.config import ConfigError

    if is_loopback(host):
        return
    gw = settings.gateway
    if name == "gateway" and not (gw.require_api_key or gw.anonymous_requests_per_minute or gw.allow_anonymous_public):
        # The service token guards gRPC only: the OpenAI HTTP API on the same host would be open to all.
        raise ConfigError(
            f"gateway: refusing to serve the OpenAI API on {host or 'all interfaces'} to anyone without limit: set "
            "SWIFTMESH_GATEWAY__REQUIRE_API_KEY=true (API keys from `swiftmesh keys create`), or a limit for callers "
            "without a key (SWIFTMESH_GATEWAY__ANONYMOUS_REQUESTS_PER_MINUTE), or SWIFTMESH_GATEWAY__ALLOW_ANONYMOUS_PUBLIC"
            "=true if an open API is meant, or listen on 127.0.0.1")
    if _token(settings) or settings.tls.require_client_cert:
        return
    raise ConfigError(
        f"{name}: refusing to listen on {host or 'all interfaces'} without authentication: set a service token "
        "(SWIFTMESH_AUTH_TOKEN, the same on every service) or mutual TLS (SWIFTMESH_TLS__REQUIRE_CLIENT_CERT=true "
        "with cert, key and CA files), or listen on 127.0.0.1"
    )


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (or mutual TLS when require_client_cert) credentials, or None for plaintext."""
    tls = settings.tls
    if tls.require_client_cert and not (tls.cert_file and tls.key_file and tls.ca_file):
        from swiftmesh.runtime.config import ConfigError

        raise ConfigError("tls.require_client_cert needs tls.cert_file, tls.key_file and tls.ca_file "
                          "(SWIFTMESH_TLS__CERT_FILE, ..._KEY_FILE, ..._CA_FILE); without them the server "
                          "would serve plaintext")
    if not (tls.enabled or tls.cert_file):
        return None
    if not (tls.cert_file and tls.key_file):
        from swiftmesh.runtime.config import ConfigError

        raise ConfigError("tls: cert_file and key_file are required for a TLS server")
    root = _read(tls.ca_file) if tls.ca_file else None
    if tls.require_client_cert and root is None:
        from swiftmesh.runtime.config import ConfigError

        raise ConfigError("tls.require_client_cert needs tls.ca_file to verify client certificates")
    return grpc.ssl_server_credentials(
        [(_read(tls.key_file), _read(tls.cert_file))],
        root_certificates=root,
        require_client_auth=tls.require_client_cert,
    )


class RunningServer:
    """A started service: its bound port, health, and a graceful ``stop``."""

    def __init__(self, service: Service, server: grpc.aio.Server, port: int, settings: Settings, metrics) -> None:
        self.service = service
        self.server = server
        self.port = port
        self.settings = settings
        self._metrics = metrics
        self._stopped = asyncio.Event()
        self._stopping = False

    @property
    def target(self) -> str:
        """The address to dial this server on ("host:port"; a wildcard bind gives 127.0.0.1)."""
        host = self.service.endpoint.host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        return f"{host}:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new calls, wait up to ``grace`` s for calls in flight, cancel the rest."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.settings.shutdown_grace_s if grace is None else grace
        log.info("%s: draining (grace %.1fs)", self.service.name, grace)
        await self.service.health.set_all(False)
        await self.server.stop(grace)
        for hook in self.service.on_stop:
            try:
                await hook()
            except Exception:
                log.exception("%s: stop hook failed", self.service.name)
        if self._metrics is not None:
            self._metrics.shutdown()
        flush_tracing()
        log.info("%s: stopped", self.service.name)
        self._stopped.set()

    async def wait(self) -> None:
        """Return once :meth:`stop` has finished."""
        await self._stopped.wait()


async def start_server(service: Service, settings: Settings) -> RunningServer:
    """Bind and start a service's gRPC server (port 0 picks a free port). Returns a RunningServer.

    Raises ConfigError for an exposed bind without authentication (:func:`check_exposure`), a
    TLS setting that cannot work, or an address that cannot be bound (a port in use: no
    SO_REUSEPORT, so a second server never silently shares a running one's port)."""
    check_exposure(service.name, service.endpoint.host, settings)
    if settings.auth_token is not None and not _token(settings):
        from swiftmesh.runtime.config import ConfigError

        raise ConfigError(f"{service.name}: SWIFTMESH_AUTH_TOKEN is empty or blank; set a real token or unset it")
    warn_weak_token(service.name, settings)
    setup_tracing(service.name, settings.telemetry.service_namespace)
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    # Status (access log, metrics) outside auth: a refused call is logged and counted with its
    # UNAUTHENTICATED code, so attempts without the token show in swiftmesh_grpc_server_handled_total.
    interceptors: list[grpc.aio.ServerInterceptor] = [aio_server_interceptor(), StatusInterceptor(service.name)]
    if settings.auth_token is not None:
        interceptors.append(AuthInterceptor(settings.auth_token.get_secret_value()))
    # No SO_REUSEPORT: a second server on a port in use must fail to bind, not share the port.
    server = grpc.aio.server(interceptors=interceptors, options=[*grpc_options(settings), ("grpc.so_reuseport", 0)])

    names = [reflection.SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
    for servicer, add_fn, full_name in service.registrations:
        add_fn(servicer, server)
        names.append(full_name)
    health_pb2_grpc.add_HealthServicer_to_server(service.health.servicer, server)
    reflection.enable_server_reflection(names, server)

    address = f"{service.endpoint.host}:{service.endpoint.port}"
    creds = server_credentials(settings)
    try:
        port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    except RuntimeError:  # grpc: "Failed to bind to address ..."
        port = 0
    if port == 0:
        from swiftmesh.runtime.config import ConfigError

        raise ConfigError(
            f"{service.name}: cannot listen on {address}: the port is in use (another server runs there) or the "
            f"host is not an address of this machine; choose another port with SWIFTMESH_{service.name.upper()}__PORT "
            "(--port; 0 for any free port) or stop the other server")
    for _, _, full_name in service.registrations:
        await service.health.set(full_name, False)
    await server.start()
    metrics = None
    if service.endpoint.metrics_port:
        try:
            metrics = start_metrics_server(service.endpoint.host, service.endpoint.metrics_port,
                                           f"SWIFTMESH_{service.name.upper()}__METRICS_PORT")
        except BaseException:
            await server.stop(0)
            raise
    running = RunningServer(service, server, port, settings, metrics)
    try:
        for hook in service.on_start:
            await hook()
    except BaseException:
        await running.stop(0)
        raise
    if service.serving_on_start:
        for _, _, full_name in service.registrations:
            await service.health.set(full_name, True)
    log.info("%s: serving gRPC on %s%s", service.name, running.target, " (TLS)" if creds else "")
    return running


async def serve(service: Service, settings: Settings, ready: Callable[[RunningServer], None] | None = None) -> None:
    """Run a service until SIGTERM or SIGINT, then drain gracefully. ``ready`` is called once bound."""
    running = await start_server(service, settings)
    if ready is not None:
        ready(running)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop_requested.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    waiter = asyncio.ensure_future(running.wait())
    signal_wait = asyncio.ensure_future(stop_requested.wait())
    await asyncio.wait({waiter, signal_wait}, return_when=asyncio.FIRST_COMPLETED)
    if stop_requested.is_set():
        log.info("%s: signal received", service.name)
    await running.stop()
    signal_wait.cancel()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.remove_signal_handler(sig)
        except (NotImplementedError, RuntimeError):
            pass
