"""The base of every SwiftMesh service client: one channel from the shared client factory
(:func:`swiftmesh.runtime.client.channel`: deadlines, retries of UNAVAILABLE, auth, TLS,
tracing), opened by ``async with`` and closed on exit."""

from __future__ import annotations

from typing import Self

from swiftmesh.runtime.client import channel
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
