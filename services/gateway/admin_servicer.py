"""The gRPC GatewayService (workers and API keys): proto <-> domain translation only.

Every RPC is an admin action. With ``auth_token`` set, the caller must present the service
token (the runtime's AuthInterceptor refuses anything else, admin API keys included, with
UNAUTHENTICATED before this servicer runs; admin keys work on the HTTP admin routes). Without
it, the service token or an admin API key as ``authorization: Bearer <secret>`` metadata.
RegisterWorker with an admin key (not the service token) admits the addresses of
``gateway.worker_allow_hosts`` only (PERMISSION_DENIED, reason WORKER_HOST_NOT_ALLOWED). A non-admin key: PERMISSION_DENIED (reason
ADMIN_REQUIRED); no or an unknown credential on a secured gateway (``auth_token`` or
``gateway.require_api_key``): UNAUTHENTICATED. A gateway with neither admits loopback
peers only (PERMISSION_DENIED, reason LOOPBACK_ONLY, for any other peer).
"""

from __future__ import annotations

import asyncio
import hmac

from google.protobuf import empty_pb2, timestamp_pb2

from swiftmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.errors import InvalidArgument, PermissionDenied, Unauthenticated

from .api.auth import is_loopback
from .keys import ApiKey, ApiKeyStore, key_id_from_name
from .ratelimit import RateLimiter
from .router import WorkerPool
from .usage import KeyUsage, UsageLedger
from .workers import Worker


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    if seconds:
        ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def worker_proto(w: Worker) -> gateway_pb2.Worker:
    """The ``Worker`` message of a pool worker."""
    return gateway_pb2.Worker(
        name=w.name, address=w.address, healthy=w.healthy, engine=w.engine, models=sorted(w.models),
        running=w.running, waiting=w.waiting, last_seen_time=_ts(w.last_seen),
    )


def key_proto(k: ApiKey, usage: KeyUsage | None = None) -> gateway_pb2.ApiKey:
    """The ``ApiKey`` message of a stored key (never its secret), with its usage when given."""
    used = usage or KeyUsage()
    return gateway_pb2.ApiKey(
        name=k.name, display_name=k.display_name, requests_per_minute=k.requests_per_minute,
        tokens_per_minute=k.tokens_per_minute, create_time=_ts(k.create_time), prefix=k.prefix, admin=k.admin,
        usage=gateway_pb2.ApiKeyUsage(requests=used.requests, tokens=used.tokens,
                                      last_use_time=_ts(used.last_use_time)),
    )


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    """Workers: the pool; keys: the store (deleting a key also forgets its rate-limit window and
    its usage); key listings carry the usage from ``usage`` when given."""

    def __init__(self, pool: WorkerPool, keys: ApiKeyStore, limiter: RateLimiter,
                 settings: Settings | None = None, usage: UsageLedger | None = None) -> None:
        self.pool = pool
        self.keys = keys
        self.limiter = limiter
        self.usage = usage
        settings = settings or Settings()
        self._token = settings.auth_token.get_secret_value() if settings.auth_token else None
        self._secured = settings.gateway.require_api_key or self._token is not None

    def _require_admin(self, context) -> bool:
        """Raise unless the caller is an admin (see the module docstring). True when an admin
        API key (not the service token) is the credential."""
        secret = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                value = value if isinstance(value, str) else value.decode()
                scheme, _, rest = value.partition(" ")
                secret = rest.strip() if scheme.lower() == "bearer" else value.strip()
        if self._token is not None and secret and hmac.compare_digest(secret.encode(), self._token.encode()):
            return False
        key = self.keys.verify(secret) if secret else None
        if key is not None:
            if key.admin:
                return True
            raise PermissionDenied(f"{key.name} is not an admin key; admin RPCs need an admin API key or the "
                                   "service token", reason="ADMIN_REQUIRED")
        if self._secured:
            raise Unauthenticated("admin RPCs need an admin API key or the service token as "
                                  "'authorization: Bearer <secret>' metadata",
                                  reason="INVALID_CREDENTIALS" if secret else "MISSING_CREDENTIALS")
        peer = context.peer()
        if not is_loopback(peer):
            raise PermissionDenied(f"a gateway without a service token or required API keys accepts admin RPCs "
                                   f"from loopback peers only (this call came from {peer})", reason="LOOPBACK_ONLY")
        return False

    async def RegisterWorker(self, request, context):
        by_key = self._require_admin(context)
        if not request.address:
            raise InvalidArgument("address is required", field_violations=[("address", "required: host:port")])
        return worker_proto(await self.pool.register(request.address, by_key=by_key))

    async def DeregisterWorker(self, request, context):
        self._require_admin(context)
        if not request.name:
            raise InvalidArgument("name is required", field_violations=[("name", "required: workers/{worker}")])
        await self.pool.deregister(request.name)
        return empty_pb2.Empty()

    async def ListWorkers(self, request, context):
        self._require_admin(context)
        workers, next_token = self.pool.list_workers(request.page_size, request.page_token)
        return gateway_pb2.ListWorkersResponse(workers=[worker_proto(w) for w in workers], next_page_token=next_token)

    async def CreateApiKey(self, request, context):
        self._require_admin(context)
        key, secret = self.keys.create(request.display_name, request.requests_per_minute,
                                       request.tokens_per_minute, request.admin)
        return gateway_pb2.CreateApiKeyResponse(api_key=key_proto(key), secret=secret)

    async def ListApiKeys(self, request, context):
        self._require_admin(context)
        keys, next_token = self.keys.list(request.page_size, request.page_token)
        used = await asyncio.to_thread(self.usage.usage, [k.key_id for k in keys]) if self.usage else {}
        return gateway_pb2.ListApiKeysResponse(api_keys=[key_proto(k, used.get(k.key_id)) for k in keys],
                                               next_page_token=next_token)

    async def DeleteApiKey(self, request, context):
        self._require_admin(context)
        key_id = key_id_from_name(request.name)
        self.keys.delete(key_id)
        self.limiter.forget(key_id)
        if self.usage is not None:
            await asyncio.to_thread(self.usage.forget, key_id)
        return empty_pb2.Empty()
