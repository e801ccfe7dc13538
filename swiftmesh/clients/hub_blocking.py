"""The hub client for blocking code (threads, Ray workers, scripts): :class:`BlockingHubClient`
and the one-call helpers ``materialize_sync``, ``upload_dir_sync`` and ``get_sync``, each over
:class:`swiftmesh.clients.hub.HubClient` on an event loop of its own.

    path = materialize_sync(settings, "models/smollm2")    # a local directory with the model files
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from swiftmesh.clients.hub import HubClient
from swiftmesh.hub.v1 import hub_pb2
from swiftmesh.runtime.config import Settings

__all__ = ["BlockingHubClient", "get_sync", "materialize_sync", "upload_dir_sync"]


def _run(coro_fn: Callable[[], Any]) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_fn())
    # called from inside a running loop (e.g. a notebook): run on a private thread, in this
    # thread's context (the current trace span stays the parent of the calls)
    ctx = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(ctx.run, lambda: asyncio.run(coro_fn())).result()


def materialize_sync(settings: Settings, name: str, dest_root: Path | None = None) -> Path:
    """Blocking :meth:`HubClient.materialize` (runs its own event loop; safe from any thread)."""

    async def go() -> Path:
        async with HubClient(settings) as hub:
            return await hub.materialize(name, dest_root)

    return _run(go)


def upload_dir_sync(settings: Settings, path: str | Path, model_id: str, **kw: Any) -> hub_pb2.Model:
    """Blocking :meth:`HubClient.upload_dir` (keyword arguments as there)."""

    async def go() -> hub_pb2.Model:
        async with HubClient(settings) as hub:
            return await hub.upload_dir(path, model_id, **kw)

    return _run(go)


def get_sync(settings: Settings, name: str) -> hub_pb2.Model:
    """Blocking :meth:`HubClient.get`. Raises NotFound."""

    async def go() -> hub_pb2.Model:
        async with HubClient(settings) as hub:
            return await hub.get(name)

    return _run(go)


class BlockingHubClient:
    """:class:`HubClient` for blocking code: any number of threads may call it at once.

    Calls run on a private event loop in a daemon thread and block until done; each opens its own
    :class:`HubClient` (one channel from the shared factory: deadlines, retries of UNAVAILABLE,
    auth, TLS, tracing), so a broken connection never outlives the call that saw it. The call is
    scheduled in the calling thread's context (its trace span is the parent).

    Args:
        settings: SwiftMesh settings (deadline, auth token, TLS).
        target: hub address "host:port" (default ``settings.hub.target``).

    Errors raise :mod:`swiftmesh.runtime.errors` exceptions, as :class:`HubClient`'s do.
    """

    def __init__(self, settings: Settings, target: str | None = None, *, send_token: bool = True) -> None:
        self.settings = settings
        self.target = target or settings.hub.target
        self.send_token = send_token
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hub-client", daemon=True)
        self._thread.start()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def get(self, name: str) -> hub_pb2.Model:
        """:meth:`HubClient.get`: the model ``name``. Raises NotFound."""

        async def go() -> hub_pb2.Model:
            async with HubClient(self.settings, self.target, send_token=self.send_token) as hub:
                return await hub.get(name)

        return self._run(go())

    def read_file(self, name: str, path: str, offset: int = 0, limit: int = 0, chunk_size: int = 0
                  ) -> Iterator[hub_pb2.ReadModelFileResponse]:
        """:meth:`HubClient.read_file` as a blocking iterator (one hand-over between threads per
        chunk); closing it early cancels the call. The channel does not retry: a broken stream
        raises (Unavailable ...) and the caller resumes from the bytes it has."""

        async def responses() -> AsyncIterator[hub_pb2.ReadModelFileResponse]:
            async with HubClient(self.settings, self.target, retries=False, send_token=self.send_token) as hub:
                async for resp in hub.read_file(name, path, offset=offset, limit=limit, chunk_size=chunk_size):
                    yield resp

        stream = responses()
        try:
            while True:
                try:
                    resp = self._run(anext(stream))
                except StopAsyncIteration:
                    return
                yield resp
        finally:
            self._run(stream.aclose())

    def close(self) -> None:
        """Stop the loop (after the calls in flight); idempotent."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
