"""Hub service process: wires the HubService servicer into the shared gRPC runtime.

    service = create_service(settings)     # the Hub domain over settings.hub_cache_dir
    await serve(service, settings)

On start, and every hour while it runs, the hub clears what crashed pulls left that nothing can
resume (staging directories of pulls no process runs, snapshot directories no model references,
partial files untouched for ``hub.partial_max_age_s``, a day by default); younger partial
downloads are kept for resume. On stop, pulls in flight are
cancelled (their partial files stay) before the server exits.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading

from swiftmesh.hub.v1 import hub_pb2, hub_pb2_grpc
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.server import Service

from .hub import Hub
from .servicer import HubServicer

SERVICE_NAME = hub_pb2.DESCRIPTOR.services_by_name["HubService"].full_name
# How often the running hub repeats the start-up sweep (at most; seconds).
SWEEP_EVERY_S = 3600.0
log = logging.getLogger("swiftmesh.hub")


def _warm_imports() -> None:
    for name in ("huggingface_hub.hf_api", "modelscope_hub.api"):
        try:
            importlib.import_module(name)
        except Exception:
            log.debug("warm-up import of %s failed", name, exc_info=True)


def create_service(settings: Settings, hub: Hub | None = None) -> Service:
    """The hub's Service description (servicers and hooks) for ``runtime.server.serve``.

    ``hub``: an existing domain object to serve (tests); default a new :class:`Hub` over
    ``settings.hub_cache_dir``.
    """
    hub = hub or Hub(settings)
    service = Service("hub", endpoint=settings.hub)
    service.add(HubServicer(hub), hub_pb2_grpc.add_HubServiceServicer_to_server, SERVICE_NAME)

    sweeper: list[asyncio.Task] = []

    async def sweep() -> None:
        every = min(SWEEP_EVERY_S, settings.hub.partial_max_age_s / 4)
        while True:
            await asyncio.sleep(every)
            try:
                await asyncio.to_thread(hub.housekeeping)
            except Exception:  # the next sweep tries again
                log.exception("hub housekeeping failed")

    async def start() -> None:
        await asyncio.to_thread(hub.housekeeping)
        sweeper.append(asyncio.ensure_future(sweep()))
        # import the source clients now, off the event loop, so the first hf:// / ms:// pull
        # does not pay for them (about a second each)
        threading.Thread(target=_warm_imports, name="hub-warmup", daemon=True).start()
        log.info("hub cache %s (host id %s, quota %s)", hub.store.root, hub.host_id,
                 settings.hub.quota_bytes or "none")

    async def stop() -> None:
        for task in sweeper:
            task.cancel()
        await asyncio.to_thread(hub.close, settings.shutdown_grace_s)

    service.on_start.append(start)
    service.on_stop.append(stop)
    service.hub = hub  # type: ignore[attr-defined]  # for tests and embedding
    return service
