"""Engine worker process: the InferenceService on the shared gRPC runtime.

:class:`WorkerRuntime` owns the engine (``settings.worker.engine``) and where models come from:

* model and adapter names are resolved through the hub (``HubClient.materialize``: the hub's
  cache directory on the same host, a verified mirror elsewhere); a name that is an existing local
  directory is used as it is (tests, air-gapped deployments);
* at start, ``settings.worker.model`` and ``settings.worker.adapters`` are loaded in the
  background while the health service says NOT_SERVING (and ``GetWorkerStatus.ready`` is false);
  then it turns SERVING and, when ``settings.worker.register_with`` is set, the worker registers
  with the gateway (``GatewayService.RegisterWorker``, retried until the gateway answers) and
  deregisters when it drains;
* pins: a model or adapter from the hub is pinned for ``workers/{host:port}`` while served and
  unpinned when unloaded or when the worker drains; a worker killed without draining leaves its
  pins, and the next start on the same address releases them before loading from the hub;
* Prometheus gauges of running / waiting requests and KV-cache usage are refreshed every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from swiftmesh.gateway.v1 import inference_pb2, inference_pb2_grpc
from swiftmesh.names import model_id, model_resource_name
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.errors import SwiftMeshError
from swiftmesh.runtime.server import Service

from .engines import Engine, EngineConfig, ServedModelInfo, create_engine
from .engines import telemetry as tm
from .worker_servicer import InferenceServicer

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
log = logging.getLogger("swiftmesh.worker")


class ModelSource:
    """Resolves model / adapter names to local directories: an existing local directory as is,
    anything else through the hub (``"x"`` or ``"models/x"``). Raises NotFound / Unavailable as the
    hub does."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def resolve(self, name: str) -> tuple[Path, str, str]:
        """(directory, default served name, hub resource name or "")."""
        local = Path(name).expanduser()
        if local.is_dir():
            return local.resolve(), local.name, ""
        from swiftmesh.clients.hub import HubClient

        resource = model_resource_name(name)
        async with HubClient(self.settings) as hub:
            path = await hub.materialize(resource)
        return Path(path), model_id(resource), resource

    async def release_stale_pins(self, holder: str) -> list[str]:
        """Unpin every hub model ``holder`` still pins (left by a run of this worker that was
        killed before it could unpin). Returns their names; best effort (the hub may be gone:
        nothing is released, logged)."""
        released: list[str] = []
        try:
            from swiftmesh.clients.hub import HubClient

            async with HubClient(self.settings, retries=False) as hub:
                for model in await hub.list():
                    if holder in model.pins:
                        await hub.unpin(model.name, holder)
                        released.append(model.name)
        except Exception as e:  # noqa: BLE001
            log.info("releasing stale pins of %s failed: %s", holder, e)
        if released:
            log.info("released stale pins of %s on %s", holder, ", ".join(released))
        return released

    async def pin(self, resource: str, holder: str, pin: bool) -> None:
        """Pin / unpin a hub model for this worker (best effort: the hub may be gone)."""
        if not resource:
            return
        try:
            from swiftmesh.clients.hub import HubClient

            async with HubClient(self.settings) as hub:
                await (hub.pin(resource, holder) if pin else hub.unpin(resource, holder))
        except Exception as e:  # noqa: BLE001
            log.debug("%s %s for %s failed: %s", "pin" if pin else "unpin", resource, holder, e)


class WorkerRuntime:
    """The worker's domain side: one engine, its models, start-up loading and registration."""

    def __init__(self, settings: Settings, engine: Engine | None = None, source: ModelSource | None = None) -> None:
        self.settings = settings
        self.engine = engine or create_engine(settings.worker.engine, EngineConfig.from_settings(settings.worker))
        self.source = source or ModelSource(settings)
        self.service: Service | None = None
        self.accepting = True
        self.load_error: str = ""
        self._tasks: list[asyncio.Task] = []
        self._registered_name = ""
        self._pins: dict[str, str] = {}

    @property
    def holder(self) -> str:
        """The pin holder of this worker on the hub (``workers/{host:port}``)."""
        return f"workers/{self.settings.worker.target}"

    # ------------------------------------------------------------ models
    async def load_model(self, name: str, served_name: str = "", *, max_model_len: int = 0,
                         dtype: str = "") -> ServedModelInfo:
        """Load a base model (local directory or hub name, pinned on the hub while served); raises as the engine and the hub do."""
        path, default_name, resource = await self.source.resolve(name)
        info = await self.engine.load_model(path, served_name or default_name, hub_model=resource,
                                            max_model_len=max_model_len, dtype=dtype)
        self._pins[info.id] = resource
        await self.source.pin(resource, self.holder, True)
        return info

    async def unload_model(self, served_name: str) -> None:
        """Unload the base model (and its adapters) and unpin them on the hub."""
        await self.engine.unload_model(served_name)
        for resource in set(self._pins.values()):
            await self.source.pin(resource, self.holder, False)
        self._pins.clear()

    async def load_adapter(self, name: str, served_name: str = "", *, base: str = "") -> ServedModelInfo:
        """Load a PEFT adapter (local directory or hub name, pinned while served) on the base model ``base``."""
        path, default_name, resource = await self.source.resolve(name)
        info = await self.engine.load_adapter(path, served_name or default_name, base=base, hub_model=resource)
        self._pins[info.id] = resource
        await self.source.pin(resource, self.holder, True)
        return info

    async def unload_adapter(self, served_name: str) -> None:
        """Unload an adapter and unpin it on the hub."""
        await self.engine.unload_adapter(served_name)
        resource = self._pins.pop(served_name, "")
        await self.source.pin(resource, self.holder, False)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the engine, the gauges and the start-up load (in the background)."""
        await self.engine.start()
        self._tasks.append(asyncio.create_task(self._gauges(), name="worker-gauges"))
        self._tasks.append(asyncio.create_task(self._startup(), name="worker-startup"))

    async def _startup(self) -> None:
        w = self.settings.worker
        try:
            if any(not Path(name).expanduser().is_dir() for name in [w.model, *w.adapters] if name):
                # Models come from the hub: first drop the pins a killed run of this worker left.
                await self.source.release_stale_pins(self.holder)
            if w.model:
                await self.load_model(w.model)
                for adapter in w.adapters:
                    await self.load_adapter(adapter)
        except Exception as e:
            self.load_error = f"{type(e).__name__}: {e}"
            log.exception("worker: loading %s failed; NOT_SERVING until a LoadModel succeeds", w.model)
            return
        if self.service is not None:
            await self.service.health.set(SERVICE_NAME, True)
        if w.register_with:
            await self._register(w.register_with)

    async def _register(self, gateway: str) -> None:
        from swiftmesh.clients.gateway import GatewayClient

        delay = 0.5
        while True:
            try:
                async with GatewayClient(self.settings, gateway) as gw:
                    worker = await gw.register_worker(self.settings.worker.target)
                self._registered_name = worker.name
                log.info("worker: registered with the gateway at %s as %s", gateway, worker.name)
                return
            except Exception as e:  # noqa: BLE001 - the gateway may start later
                log.warning("worker: registering with %s failed (%s); retrying in %.1fs", gateway, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _deregister(self) -> None:
        gateway = self.settings.worker.register_with
        if not (gateway and self._registered_name):
            return
        from swiftmesh.clients.gateway import GatewayClient

        try:
            async with GatewayClient(self.settings, gateway, timeout=3.0, retries=False) as gw:
                await gw.deregister_worker(self._registered_name)
        except Exception as e:  # noqa: BLE001 - best effort while draining
            log.info("worker: deregistering failed: %s", e)

    async def _gauges(self) -> None:
        kind = self.engine.kind
        while True:
            try:
                st = self.engine.status()
                tm.RUNNING.labels(kind).set(st.running)
                tm.WAITING.labels(kind).set(st.waiting)
                tm.KV_USAGE.labels(kind).set(st.kv_cache_usage)
            except Exception:
                log.debug("status refresh failed", exc_info=True)
            await asyncio.sleep(1.0)

    async def stop(self) -> None:
        """Drain: refuse new requests, deregister from the gateway, unpin, stop the engine."""
        self.accepting = False
        await self._deregister()
        for resource in set(self._pins.values()):
            await self.source.pin(resource, self.holder, False)
        self._pins.clear()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        self._tasks.clear()
        try:
            await self.engine.shutdown()
        except SwiftMeshError as e:
            log.warning("worker: engine shutdown: %s", e)


def create_service(settings: Settings, runtime: WorkerRuntime | None = None) -> Service:
    """An engine worker's Service description for ``runtime.server.serve``.

    Health starts NOT_SERVING and turns SERVING once the configured model (if any) is loaded.
    """
    runtime = runtime or WorkerRuntime(settings)
    service = Service("worker", endpoint=settings.worker, serving_on_start=False)
    runtime.service = service
    service.add(InferenceServicer(runtime), inference_pb2_grpc.add_InferenceServiceServicer_to_server, SERVICE_NAME)

    async def start() -> None:
        await runtime.start()
        if not settings.worker.model:
            await service.health.set(SERVICE_NAME, True)

    async def drain() -> None:
        await runtime.stop()

    service.on_start.append(start)
    service.on_stop.append(drain)
    service.runtime = runtime  # type: ignore[attr-defined]
    return service
