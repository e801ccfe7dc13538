"""The gRPC client factory every SwiftMesh client and service uses to reach another service.

Each channel gets:
  * a deadline on every call (``Settings.rpc_timeout_s`` for unary responses, ``stream_timeout``
    for streamed ones; an explicit ``timeout=`` wins);
  * retries of UNAVAILABLE through the gRPC service config (exponential backoff, 5 attempts),
    so a service that restarts is reached again without caller code;
  * the shared auth token as ``authorization`` metadata;
  * TLS, or mutual TLS with a client certificate, from ``Settings.tls``;
  * OpenTelemetry client spans, with the trace context carried in the metadata.

    async with channel(settings.hub.target, settings) as ch:
        stub = hub_pb2_grpc.HubServiceStub(ch)
        model = await stub.GetModel(hub_pb2.GetModelRequest(name="models/x"))

Errors surface as ``grpc.aio.AioRpcError``; :func:`raise_domain_error` /
:func:`swiftmesh.runtime.errors.from_status_proto` turn them back into SwiftMeshError.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from grpc_status import rpc_status

from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.errors import SwiftMeshError, Unavailable, error_for_code, from_status_proto
from swiftmesh.runtime.interceptors import call_defaults_interceptors
from swiftmesh.runtime.server import grpc_options

RETRY_SERVICE_CONFIG = {
    "methodConfig": [
        {
            "name": [{}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.2s",
                "maxBackoff": "3s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}

DEFAULT_STREAM_TIMEOUT_S = 24 * 3600.0


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """TLS channel credentials from Settings.tls (with a client certificate for mutual TLS)."""
    tls = settings.tls
    if not (tls.enabled or tls.ca_file):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file) if tls.ca_file else None,
        private_key=_read(tls.key_file) if tls.key_file else None,
        certificate_chain=_read(tls.cert_file) if tls.cert_file else None,
    )


def channel(
    target: str,
    settings: Settings,
    *,
    timeout: float | None = None,
    stream_timeout: float = DEFAULT_STREAM_TIMEOUT_S,
    retries: bool = True,
    send_token: bool = True,
) -> grpc.aio.Channel:
    """An aio channel to ``target`` ("host:port") with deadlines, retries, auth, TLS and tracing.

    ``send_token=False`` leaves the service token out: pass ``target in settings.configured_peers()``
    when the target comes from a request (a ``hub://`` source) rather than from configuration.
    Use it as ``async with channel(...) as ch`` or close it with ``await ch.close()``.
    """
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    token = settings.auth_token.get_secret_value() if settings.auth_token and send_token else None
    interceptors = [
        *call_defaults_interceptors(token, timeout or settings.rpc_timeout_s, stream_timeout),
        *aio_client_interceptors(),
    ]
    options = grpc_options(settings) + [("grpc.enable_retries", 1 if retries else 0)]
    if retries:
        options.append(("grpc.service_config", json.dumps(RETRY_SERVICE_CONFIG)))
    if settings.tls.server_name:
        options.append(("grpc.ssl_target_name_override", settings.tls.server_name))
    creds = channel_credentials(settings)
    if creds is not None:
        return grpc.aio.secure_channel(target, creds, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


# What gRPC core says when a connection could not be set up (grpcio 1.85): the server closed it
# during the TLS handshake (it wants TLS, or a client certificate its CA signed), or this side
# refused the server's certificate (wrong CA, name) or got no TLS at all.
_CLOSED_WHILE_CONNECTING = "Socket closed"
_HANDSHAKE_FAILED = "handshake failed"


def connect_failure_hint(details: str) -> str:
    """What to check when ``details`` (an UNAVAILABLE call's message) says the connection could not
    be set up because of TLS; "" for other failures (a server that is down, a refused port)."""
    if not details.startswith("failed to connect"):
        return ""
    if _HANDSHAKE_FAILED in details.lower():
        return ("TLS handshake failed on this side: the server's certificate is not signed by tls.ca_file, does "
                "not name the host dialled (tls.server_name), or the server does not speak TLS")
    if details.rstrip().endswith(_CLOSED_WHILE_CONNECTING):
        return ("the server closed the connection during the handshake: it may require TLS (tls.enabled, "
                "tls.ca_file) or a client certificate signed by its CA (tls.cert_file and tls.key_file, "
                "as its tls.require_client_cert asks)")
    return ""


def domain_error(err: grpc.RpcError) -> SwiftMeshError:
    """The SwiftMeshError an RpcError carries (google.rpc details decoded when present).

    A call that failed because the connection could not be set up over TLS (the server refused
    this client's certificate or its absence, or this client refused the server's) is
    Unavailable with reason ``TLS_HANDSHAKE_FAILED`` and a message saying which settings to check.
    """
    status = rpc_status.from_call(err) if hasattr(err, "trailing_metadata") else None
    if status is not None:
        return from_status_proto(status)
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else str(err)) or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        hint = connect_failure_hint(details)
        if hint:
            return Unavailable(f"{details} ({hint})", reason="TLS_HANDSHAKE_FAILED")
    cls = error_for_code(code.value[0]) if code else Unavailable
    return cls(details)


@contextmanager
def raise_domain_errors() -> Iterator[None]:
    """Re-raise ``grpc.RpcError`` inside the block as the matching SwiftMeshError."""
    try:
        yield
    except grpc.RpcError as e:
        raise domain_error(e) from None
