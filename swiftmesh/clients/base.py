"""The base of every SwiftMesh service client: one channel from the shared client factory
(:func:`swiftmesh.runtime.client.channel`: deadlines, retries of UNAVAILABLE, auth, TLS,
tracing), opened by ``async with`` and closed on exit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Self

from swiftmesh.runtime.client import channel, raise_domain_errors
from swiftmesh.runtime.config import Settings


class ServiceClient:
    """``async with SomeClient(settings, target) as c:`` opens the channel and the stubs
    (:meth:`_open`, which subclasses implement); leaving the block closes the channel.

    Args:
        settings: SwiftMesh settings (deadline, auth token, TLS).
        target: the service's address "host:port".
    """

    def __init__(self, settings: Settings, target: str) -> None:
        self.settings = settings
        self.target = target
        self._channel = None

    async def __aenter__(self) -> Self:
        self._channel = channel(self.target, self.settings)
        self._open()
        return self

    def _open(self) -> None:
        """Create the stubs on ``self._channel``."""
        raise NotImplementedError

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel (in-flight calls are cancelled); idempotent."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


async def all_pages(fetch: Callable[[str], Awaitable[Any]], field: str, *, first_only: bool = False) -> list[Any]:
    """The items of a paged ``List`` call (AIP-158): ``await fetch(page_token)`` from "" until a
    response's ``next_page_token`` is empty, collecting each response's repeated ``field``; with
    ``first_only`` just the first page. A failed call raises its domain error (SwiftMeshError)."""
    out: list[Any] = []
    token = ""
    while True:
        with raise_domain_errors():
            resp = await fetch(token)
        out.extend(getattr(resp, field))
        token = resp.next_page_token
        if not token or first_only:
            return out
