"""The worker pool: which engine workers serve which models, how loaded and healthy they are,
and where each generation goes.

* Workers (:class:`~.workers.Worker`) come from ``settings.gateway.workers`` and from ``GatewayService.RegisterWorker``.
  Each is polled every ``settings.gateway.health_check_interval_s`` seconds with
  ``InferenceService.GetWorkerStatus`` (served models, running and waiting requests, ready).
  A worker that cannot be reached (or is not ready: loading, draining) leaves the rotation at
  once and comes back at the first successful poll; a poll that times out twice in a row
  (a very busy worker) counts as unreachable too.
* Routing: among the healthy workers serving the requested model, the least loaded one: its
  polled ``running + waiting`` plus the requests this gateway sent it since that poll (ties at
  random).
* Fail over: a generation whose worker answers UNAVAILABLE (or NOT_FOUND for a model it no
  longer serves) before its first response goes to the next worker; when none is left:
  :class:`~swiftmesh.runtime.errors.Unavailable` (HTTP 503). A model no worker has ever listed
  is :class:`~swiftmesh.runtime.errors.NotFound` (HTTP 404).
* Abort: closing a :class:`GenerationStream` cancels its call, which aborts the request in the
  engine (the InferenceService contract).

Every call to a worker goes through :class:`swiftmesh.clients.gateway.WorkerClient` (the shared
channel factory: auth, TLS, deadlines, tracing; its retries are off, failing over is done here),
in the domain types of :mod:`swiftmesh.clients.inference`. Nothing here knows gRPC, HTTP or the
OpenAI API; the REST handlers use :meth:`WorkerPool.generate`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Iterable
from typing import Self

from swiftmesh.clients.gateway import GenerationCall
from swiftmesh.clients.inference import GenerateRequest, GenerateResponse, ServedModel
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.errors import DeadlineExceeded, InvalidArgument, NotFound, SwiftMeshError, Unavailable
from swiftmesh.runtime.paging import page

from .workers import (
    WORKER_HEALTHY,
    WORKER_INFLIGHT,
    WORKER_KV,
    WORKER_ROUTED,
    WORKER_RUNNING,
    WORKER_WAITING,
    Worker,
    WorkerRegistry,
    check_address,
    check_key_registration,
    worker_id,
)

log = logging.getLogger("swiftmesh.gateway.router")

#: Deadline of one status poll, seconds.
POLL_TIMEOUT_S = 5.0
#: Polls that time out in a row before a worker leaves the rotation.
MAX_POLL_TIMEOUTS = 2
#: Least time between two "unknown model" refreshes of every worker, seconds.
REFRESH_MIN_INTERVAL_S = 1.0
#: Deadline of admin calls (loading a model or adapter may download it), seconds.
ADMIN_TIMEOUT_S = 1800.0

class GenerationStream:
    """One generation in flight on one worker: the first response (already received, so the
    request has started) and then the rest. Iterate it once; ``aclose()`` (or leaving an
    ``async with``) cancels the call, which aborts the request in the engine.

    Errors while reading raise the domain error the worker's status carries
    (:class:`Unavailable` when the worker went away).
    """

    def __init__(self, pool: WorkerPool, worker: Worker, call: GenerationCall | None,
                 first: GenerateResponse | None) -> None:
        self.worker = worker
        self.first = first
        self._pool = pool
        self._call = call
        self._released = False
        self.finished = first is None

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.worker.inflight -= 1
            WORKER_INFLIGHT.labels(self.worker.address).set(self.worker.inflight)

    async def __aiter__(self) -> AsyncIterator[GenerateResponse]:
        try:
            if self.first is not None:
                first, self.first = self.first, None
                yield first
            while True:
                try:
                    msg = await self._call.read()
                except Unavailable as err:
                    self._pool.worker_failed(self.worker, f"generate: {err.message}")
                    raise
                if msg is None:
                    self.finished = True
                    return
                yield msg
        finally:
            if not self.finished:
                self._call.cancel()
            self._release()

    async def aclose(self) -> None:
        """Abort the engine request if it has not finished (idempotent)."""
        if not self.finished:
            self._call.cancel()
            self.finished = True
        self._release()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


class WorkerPool:
    """The engine workers behind the gateway: health, models, load, routing.

    Args:
        settings: ``gateway.workers`` (static addresses), ``gateway.health_check_interval_s``,
            and the shared client settings (auth token, TLS) used to dial the workers.
        registry: where registered workers are kept (None: in memory only). With one, the pool
            starts with the registered workers and each health-check round re-reads it, so
            replicas on one database converge on the same workers.
    """

    def __init__(self, settings: Settings, registry: WorkerRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.interval = settings.gateway.health_check_interval_s
        self._workers: dict[str, Worker] = {}
        self._task: asyncio.Task | None = None
        self._last_refresh_all = 0.0
        self._refresh_lock = asyncio.Lock()

    # --------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Add the static workers, poll them once, and start the periodic health check."""
        for address in self.settings.gateway.workers:
            address = check_address(address)
            self._workers.setdefault(address, Worker(address, static=True))
        await self.refresh_all()
        self._task = asyncio.create_task(self._loop(), name="gateway-health-check")

    async def stop(self) -> None:
        """Stop the health check and close every worker's client."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for w in self._workers.values():
            await w.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh_all()
            except Exception:
                log.exception("health check round failed")

    # ----------------------------------------------------------------------- polling
    async def refresh(self, worker: Worker) -> bool:
        """Poll one worker's status; returns whether it is healthy afterwards."""
        try:
            status = await worker.client(self.settings).status(timeout=POLL_TIMEOUT_S)
        except SwiftMeshError as e:
            if isinstance(e, DeadlineExceeded) and worker.reachable:
                worker.timeouts += 1
                if worker.timeouts < MAX_POLL_TIMEOUTS:
                    return worker.healthy
            self._poll_failed(worker, f"{e.code_name}: {e.message}")
            return False
        except Exception as e:  # noqa: BLE001 - e.g. a channel closed under us
            self._poll_failed(worker, f"{type(e).__name__}: {e}")
            return False
        if worker.address not in self._workers:
            return False  # deregistered meanwhile
        was = worker.healthy
        worker.timeouts = 0
        worker.polled = True
        worker.reachable = True
        worker.ready = status.ready
        worker.engine = status.engine
        worker.device = status.device
        worker.models = {m.id: m for m in status.models}
        worker.running = status.running
        worker.waiting = status.waiting
        worker.kv_cache_usage = status.kv_cache_usage
        worker.inflight_at_poll = worker.inflight
        worker.last_seen = time.time()
        worker.last_error = "" if status.ready else "not ready"
        if worker.healthy and not was:
            log.info("worker %s in rotation (%s, models: %s)", worker.address, worker.engine,
                     ", ".join(worker.models) or "none")
        WORKER_HEALTHY.labels(worker.address).set(1 if worker.healthy else 0)
        WORKER_RUNNING.labels(worker.address).set(worker.running)
        WORKER_WAITING.labels(worker.address).set(worker.waiting)
        WORKER_KV.labels(worker.address).set(worker.kv_cache_usage)
        return worker.healthy

    def _poll_failed(self, worker: Worker, error: str) -> None:
        worker.polled = True
        worker.timeouts = 0
        worker.mark_unreachable(error)
        worker.reset_channel()

    async def _sync_registry(self) -> None:
        """Add the registry's workers this pool lacks; drop registered ones it no longer has."""
        if self.registry is None:
            return
        try:
            addresses = set(await asyncio.to_thread(self.registry.addresses))
        except Exception as e:  # noqa: BLE001 - a database outage keeps the current workers
            log.warning("worker registry unreadable: %s", e)
            return
        for address in addresses - self._workers.keys():
            self._workers[address] = Worker(address)
            log.info("worker %s from the registry", address)
        for w in [w for w in self._workers.values() if not w.static and w.address not in addresses]:
            self._drop(w)

    async def refresh_all(self) -> None:
        """Re-read the registry (if any), then poll every worker concurrently."""
        await self._sync_registry()
        self._last_refresh_all = time.monotonic()
        workers = list(self._workers.values())
        if workers:
            await asyncio.gather(*(self.refresh(w) for w in workers))

    def worker_failed(self, worker: Worker, error: str) -> None:
        """A call found the worker unreachable: out of the rotation until a poll succeeds."""
        worker.mark_unreachable(error)
        worker.reset_channel()

    # ------------------------------------------------------------------ registration
    async def register(self, address: str, *, by_key: bool = False) -> Worker:
        """Add a worker (idempotent by address) and poll it once. InvalidArgument for a bad address;
        with ``by_key`` (an admin API key asks, not the service token) PermissionDenied for an
        address ``gateway.worker_allow_hosts`` does not admit (:func:`~.workers.check_key_registration`)."""
        address = check_address(address)
        if by_key:
            check_key_registration(address, self.settings)
        worker = self._workers.get(address)
        if worker is None:
            worker = Worker(address)
            self._workers[address] = worker
            log.info("worker %s registered", address)
        if self.registry is not None and not worker.static:
            await asyncio.to_thread(self.registry.add, address)
        await self.refresh(worker)
        return worker

    async def deregister(self, name: str) -> None:
        """Remove a worker by name (``workers/{id}``) or address. NotFound if unknown.
        Generations already on it run to their end."""
        worker = self.find(name)
        if self.registry is not None:
            await asyncio.to_thread(self.registry.remove, worker.address)
        self._drop(worker)

    def _drop(self, worker: Worker) -> None:
        del self._workers[worker.address]
        for gauge in (WORKER_HEALTHY, WORKER_RUNNING, WORKER_WAITING, WORKER_KV, WORKER_INFLIGHT):
            try:
                gauge.remove(worker.address)
            except KeyError:
                pass
        log.info("worker %s deregistered", worker.address)
        task = asyncio.ensure_future(self._close_later(worker))
        task.add_done_callback(lambda t: None)

    @staticmethod
    async def _close_later(worker: Worker) -> None:
        while worker.inflight > 0:
            await asyncio.sleep(1.0)
        await worker.close()

    def find(self, name: str) -> Worker:
        """A worker by name (``workers/{id}``) or address. NotFound if unknown."""
        if name in self._workers:
            return self._workers[name]
        wid = name.removeprefix("workers/")
        for w in self._workers.values():
            if worker_id(w.address) == wid:
                return w
        raise NotFound(f"worker {name!r} is not registered", reason="WORKER_NOT_FOUND")

    def workers(self) -> list[Worker]:
        """Every registered worker, healthy or not."""
        return list(self._workers.values())

    def list_workers(self, page_size: int = 0, page_token: str = "") -> tuple[list[Worker], str]:
        """Workers by address, ``page_size`` at a time (0: 100, at most 1000), and the next page
        token ("" after the last page). InvalidArgument for a bad token."""
        p = page(page_size, page_token, "workers", default=100)
        workers = sorted(self._workers.values(), key=lambda w: w.address)
        return workers[p.offset:p.offset + p.size], p.next_token(p.offset + p.size < len(workers))

    # ------------------------------------------------------------------------ models
    def served_models(self) -> list[ServedModel]:
        """Models served by at least one healthy worker (one entry per id)."""
        out: dict[str, ServedModel] = {}
        for w in self._workers.values():
            if not w.healthy:
                continue
            for mid, m in w.models.items():
                if mid not in out or (m.created and m.created < out[mid].created):
                    out[mid] = m
        return list(out.values())

    def model_info(self, model: str) -> ServedModel | None:
        """What a healthy worker says about ``model`` (None if none serves it)."""
        for w in self._workers.values():
            if w.healthy and model in w.models:
                return w.models[model]
        return None

    async def resolve(self, model: str) -> ServedModel:
        """The served model, polling every worker first (at most once a second) when no worker
        is known to serve it. NotFound if no worker (healthy or not) lists it; Unavailable if
        only unhealthy ones do."""
        info = self.model_info(model)
        if info is not None:
            return info
        if time.monotonic() - self._last_refresh_all >= REFRESH_MIN_INTERVAL_S:
            async with self._refresh_lock:
                if time.monotonic() - self._last_refresh_all >= REFRESH_MIN_INTERVAL_S:
                    await self.refresh_all()
            info = self.model_info(model)
            if info is not None:
                return info
        self._raise_unroutable(model, ())
        raise AssertionError("unreachable")

    def _raise_unroutable(self, model: str, tried: Iterable[str]) -> None:
        if any(model in w.models for w in self._workers.values()) or tried:
            raise Unavailable(
                f"no healthy worker serves model {model!r} right now; try again later",
                reason="NO_HEALTHY_WORKER",
                metadata={"openai_code": "no_healthy_worker", "model": model},
                retry_after=max(1.0, self.interval),
            )
        raise NotFound(
            f"The model `{model}` does not exist or you do not have access to it.",
            reason="MODEL_NOT_FOUND",
            metadata={"openai_code": "model_not_found", "param": "model", "model": model},
        )

    def select(self, model: str, exclude: Iterable[str] = ()) -> Worker:
        """The least loaded healthy worker serving ``model``, not in ``exclude`` (addresses)."""
        excluded = set(exclude)
        candidates = [w for w in self._workers.values()
                      if w.healthy and model in w.models and w.address not in excluded]
        if not candidates:
            self._raise_unroutable(model, excluded)
        best = min(w.load for w in candidates)
        return random.choice([w for w in candidates if w.load == best])

    # ---------------------------------------------------------------------- generate
    async def generate(
        self, request: GenerateRequest, exclude: Iterable[str] = ()
    ) -> GenerationStream:
        """Start a generation on the least loaded healthy worker serving ``request.model`` and
        wait for its first response, failing over to the next worker while a worker answers
        UNAVAILABLE (or NOT_FOUND) before that. Other worker errors (INVALID_ARGUMENT ...) are
        raised as domain errors; Unavailable when no worker is left, NotFound for an unknown model.
        """
        tried: set[str] = set(exclude)
        last_error: SwiftMeshError | None = None
        while True:
            try:
                worker = self.select(request.model, tried)
            except Unavailable:
                if last_error is not None and not isinstance(last_error, Unavailable):
                    raise last_error from None
                raise
            tried.add(worker.address)
            worker.inflight += 1
            WORKER_INFLIGHT.labels(worker.address).set(worker.inflight)
            stream = GenerationStream(self, worker, None, None)
            try:
                call = worker.client(self.settings).generate(request)
                stream._call = call
                first = await call.read()
            except SwiftMeshError as err:
                stream._release()
                if isinstance(err, Unavailable):
                    WORKER_ROUTED.labels(worker.address, "unavailable").inc()
                    self.worker_failed(worker, f"generate: {err.message}")
                    last_error = err
                    continue
                WORKER_ROUTED.labels(worker.address, "error").inc()
                if isinstance(err, NotFound) and request.model in worker.models:
                    # The worker no longer serves it (unloaded since the last poll).
                    worker.models.pop(request.model, None)
                    last_error = err
                    continue
                raise
            except BaseException:
                stream._release()
                if stream._call is not None:
                    stream._call.cancel()
                raise
            WORKER_ROUTED.labels(worker.address, "started").inc()
            stream.first = first
            stream.finished = first is None
            if stream.finished:
                stream._release()
            return stream

    # ------------------------------------------------------------------------- admin
    async def _admin(self, worker: Worker, method: str, *args, **kwargs):
        """``WorkerClient.<method>(*args, **kwargs)`` on one worker; an Unavailable worker
        leaves the rotation. Domain errors on failure."""
        try:
            return await getattr(worker.client(self.settings), method)(*args, **kwargs)
        except Unavailable as err:
            self.worker_failed(worker, f"{method}: {err.message}")
            raise

    def _targets(self, addresses: list[str] | None) -> list[Worker]:
        if addresses:
            return [self.find(a) for a in addresses]
        return [w for w in self._workers.values() if w.healthy]

    async def load_adapter(
        self, adapter: str, served_name: str = "", base: str = "", workers: list[str] | None = None
    ) -> tuple[ServedModel, list[str]]:
        """Load an adapter (a hub name, ``models/{model}`` or ``{model}``, or a directory on the
        workers' hosts: the worker resolves it) on every healthy worker serving ``base``
        (required when the workers serve several base models), or on ``workers``.

        Returns the served adapter and the addresses it was loaded on. InvalidArgument without
        ``base`` when it is ambiguous; NotFound for an unknown ``base``; Unavailable if no worker
        qualifies; the first worker error if any load fails (the others stay loaded)."""
        candidates = self._targets(workers)
        if not base:
            bases = sorted({m.id for w in candidates for m in w.models.values() if not m.parent})
            if len(bases) > 1:
                raise InvalidArgument(
                    f"the workers serve several base models ({', '.join(bases)}): name the adapter's base",
                    field_violations=[("base", "required when the workers serve several base models")])
        targets = [w for w in candidates
                   if any(not m.parent and (not base or m.id == base) for m in w.models.values())]
        if not targets:
            what = f"base model {base!r}" if base else "a base model"
            if base and not any(base in w.models for w in self._workers.values()):
                raise NotFound(f"The model `{base}` does not exist or you do not have access to it.",
                               reason="MODEL_NOT_FOUND", metadata={"param": "base", "openai_code": "model_not_found"})
            raise Unavailable(f"no healthy worker serves {what}", reason="NO_HEALTHY_WORKER")
        results = await asyncio.gather(*(self._admin(w, "load_adapter", adapter, served_name, base) for w in targets),
                                       return_exceptions=True)
        await asyncio.gather(*(self.refresh(w) for w in targets))
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results[0], [w.address for w in targets]

    async def unload_adapter(self, served_name: str) -> list[str]:
        """Unload an adapter from every healthy worker serving it. Returns the addresses.
        NotFound if no healthy worker serves it; InvalidArgument for a base model."""
        targets = [w for w in self._workers.values() if w.healthy and served_name in w.models]
        if not targets:
            raise NotFound(f"The model `{served_name}` does not exist or you do not have access to it.",
                           reason="MODEL_NOT_FOUND", metadata={"openai_code": "model_not_found"})
        if any(not w.models[served_name].parent for w in targets):
            raise InvalidArgument(f"{served_name!r} is a base model, not an adapter",
                                  field_violations=[("served_name", "a base model, not an adapter")])
        results = await asyncio.gather(*(self._admin(w, "unload_adapter", served_name, timeout=ADMIN_TIMEOUT_S)
                                         for w in targets), return_exceptions=True)
        await asyncio.gather(*(self.refresh(w) for w in targets))
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return [w.address for w in targets]
