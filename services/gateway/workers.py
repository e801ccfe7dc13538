"""An engine worker as the gateway sees it (:class:`Worker`: address, health, load, served
models, its :class:`~swiftmesh.clients.gateway.WorkerClient`), worker addresses and ids, and the
Prometheus metrics of the workers. The pool that polls and routes is :mod:`.router`."""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import logging
import re
import time
from dataclasses import dataclass, field

import sqlalchemy as sa
from prometheus_client import Counter, Gauge

from swiftmesh.clients.gateway import WorkerClient
from swiftmesh.clients.inference import ServedModel
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.errors import InvalidArgument, PermissionDenied

log = logging.getLogger("swiftmesh.gateway.router")

WORKER_HEALTHY = Gauge("swiftmesh_gateway_worker_healthy", "1 when the worker is in rotation.", ["worker"])
WORKER_RUNNING = Gauge("swiftmesh_gateway_worker_running_requests", "Requests the worker decodes (last poll).", ["worker"])
WORKER_WAITING = Gauge("swiftmesh_gateway_worker_waiting_requests", "Requests waiting on the worker (last poll).", ["worker"])
WORKER_KV = Gauge("swiftmesh_gateway_worker_kv_cache_usage", "KV-cache fraction in use on the worker (last poll).", ["worker"])
WORKER_ROUTED = Counter("swiftmesh_gateway_worker_generations", "Generations sent to the worker, by outcome of the "
                        "start (started, unavailable: failed over, error).", ["worker", "outcome"])
WORKER_INFLIGHT = Gauge("swiftmesh_gateway_worker_inflight_requests", "Requests this gateway has in flight on the worker.", ["worker"])

_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})$")


def worker_id(address: str) -> str:
    """Resource id of a worker from its address: ``"127.0.0.1:50054"`` -> ``"127-0-0-1-50054"``."""
    return re.sub(r"[^a-z0-9]+", "-", address.lower()).strip("-")


def check_address(address: str) -> str:
    """Validate ``host:port``; InvalidArgument naming ``address`` otherwise."""
    address = address.strip()
    m = _ADDRESS.match(address)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise InvalidArgument(f"invalid worker address {address!r}: expected host:port",
                              field_violations=[("address", "expected host:port")])
    return address


def host_allowed(address: str, allow: list[str]) -> bool:
    """Whether ``address`` ("host:port") matches an entry of ``allow``: a network or IP
    ("10.0.0.0/8", "::1") for an IP host, a glob of the host name ("*.workers.svc", case
    ignored), or the whole "host:port"."""
    host = address.rsplit(":", 1)[0].strip("[]").lower()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for entry in (e.strip().lower() for e in allow):
        if not entry:
            continue
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
                continue
            except ValueError:
                pass
        if fnmatch.fnmatchcase(host, entry) or fnmatch.fnmatchcase(address.lower(), entry):
            return True
    return False


def check_key_registration(address: str, settings: Settings) -> None:
    """PermissionDenied (reason WORKER_HOST_NOT_ALLOWED) unless an admin API key may register
    ``address``: one the configuration names (``settings.configured_peers()``) or one whose host
    ``gateway.worker_allow_hosts`` admits. The gateway sends the service token to every worker it
    polls, so a key (a person) must not point it at any address; workers registering themselves
    with the service token are not checked."""
    if address in settings.configured_peers() or host_allowed(address, settings.gateway.worker_allow_hosts):
        return
    raise PermissionDenied(
        f"an admin API key may register workers on the hosts of gateway.worker_allow_hosts only "
        f"({address!r} is not among {settings.gateway.worker_allow_hosts}); set "
        "SWIFTMESH_GATEWAY__WORKER_ALLOW_HOSTS, or let the worker register itself with the service token",
        reason="WORKER_HOST_NOT_ALLOWED")


@dataclass
class Worker:
    """An engine worker as the gateway sees it."""

    address: str
    static: bool = False
    reachable: bool = False
    ready: bool = False
    engine: str = ""
    device: str = ""
    models: dict[str, ServedModel] = field(default_factory=dict)
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    inflight: int = 0
    inflight_at_poll: int = 0
    last_seen: float = 0.0  # unix seconds of the last successful poll
    last_error: str = ""
    timeouts: int = 0
    polled: bool = False
    _client: WorkerClient | None = None

    @property
    def name(self) -> str:
        """Resource name ``workers/{id}``."""
        return f"workers/{worker_id(self.address)}"

    @property
    def healthy(self) -> bool:
        """In rotation: reachable at the last poll and ready."""
        return self.reachable and self.ready

    @property
    def load(self) -> int:
        """Polled running + waiting, plus what this gateway sent since that poll."""
        return max(self.running + self.waiting + self.inflight - self.inflight_at_poll, self.inflight)

    def client(self, settings: Settings) -> WorkerClient:
        """The open client of this worker (opened on first use; no channel retries)."""
        if self._client is None:
            self._client = WorkerClient(settings, self.address, retries=False).open()
        return self._client

    def reset_channel(self) -> None:
        """Drop the client (a fresh one reconnects at once, without gRPC's reconnect backoff);
        calls still on the old one get 30 s to finish."""
        old, self._client = self._client, None
        if old is not None:
            task = asyncio.ensure_future(old.close(grace=30.0))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def close(self) -> None:
        """Close the client now (calls in flight are cancelled)."""
        old, self._client = self._client, None
        if old is not None:
            await old.close()

    def mark_unreachable(self, error: str) -> None:
        """Out of the rotation (logged once) with ``error`` as the reason."""
        if self.reachable:
            log.warning("worker %s left the rotation: %s", self.address, error)
        self.reachable = False
        self.last_error = error
        self.running = self.waiting = 0
        self.inflight_at_poll = self.inflight
        WORKER_HEALTHY.labels(self.address).set(0)


class WorkerRegistry:
    """The registered (not static) worker addresses on the gateway database (table
    ``gateway_workers``, migration 0002), so a restarted gateway re-reads its workers and replicas
    on one database see the same ones. Blocking calls (one short transaction each).

    Args:
        engine: the gateway database (``ApiKeyStore.engine``).
    """

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def add(self, address: str) -> None:
        """Record ``address`` (idempotent)."""
        try:
            with self.engine.begin() as db:
                if db.execute(sa.select(gateway_workers.c.address)
                              .where(gateway_workers.c.address == address)).first():
                    return
                db.execute(gateway_workers.insert().values(address=address, register_time=time.time()))
        except sa.exc.IntegrityError:  # another replica added it meanwhile
            pass

    def remove(self, address: str) -> None:
        """Forget ``address`` (no error when absent)."""
        with self.engine.begin() as db:
            db.execute(gateway_workers.delete().where(gateway_workers.c.address == address))

    def addresses(self) -> list[str]:
        """Every registered address, in registration order."""
        with self.engine.connect() as db:
            return list(db.execute(sa.select(gateway_workers.c.address)
                                   .order_by(gateway_workers.c.register_time)).scalars())


#: The registry's table (created by migration 0002 of :mod:`swiftmesh.migrations`).
gateway_workers = sa.Table(
    "gateway_workers", sa.MetaData(),
    sa.Column("address", sa.Text, primary_key=True),
    sa.Column("register_time", sa.Float, nullable=False),
)
