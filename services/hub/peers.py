"""Other hubs, as the domain sees them: the models they hold and the bytes of their files.

Calls go through the hub client (:class:`swiftmesh.clients.hub_blocking.BlockingHubClient`, on the shared
channel factory: deadlines, retries of UNAVAILABLE, auth, TLS, tracing; a channel per call), one
client per target, shared by every pull of this process. The client's messages become the domain's types here; errors
arrive as :mod:`swiftmesh.runtime.errors` exceptions.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from swiftmesh.clients.hub_blocking import BlockingHubClient
from swiftmesh.runtime.config import Settings

from .store import FileEntry, ModelFormat


@dataclass
class PeerModel:
    """A model on another hub: its resource name, revision, format and files (path, size, sha256)."""

    name: str
    revision: str
    format: ModelFormat
    files: list[FileEntry]


class PeerHubs:
    """The other hubs this hub mirrors from (thread-safe).

    Args:
        settings: this hub's settings (auth token, TLS, deadlines, message limits).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._clients: dict[str, BlockingHubClient] = {}
        self._lock = threading.Lock()

    def _client(self, target: str) -> BlockingHubClient:
        with self._lock:
            client = self._clients.get(target)
            if client is None:
                # the service token goes only to peers this configuration names (service addresses, trusted_peers),
                # never to whatever host a pull request's hub:// source names
                client = self._clients[target] = BlockingHubClient(
                    self.settings, target, send_token=target in self.settings.configured_peers())
            return client

    def get_model(self, target: str, model_id: str) -> PeerModel:
        """The model ``model_id`` of the hub at ``target`` ("host:port"). Raises that hub's error
        (NotFound ...), Unavailable (unreachable), DeadlineExceeded."""
        m = self._client(target).get(f"models/{model_id}")
        return PeerModel(
            name=m.name,
            revision=m.revision,
            format=ModelFormat(m.format) if m.format else ModelFormat.UNSPECIFIED,
            files=[FileEntry(f.path, f.size_bytes, f.sha256) for f in m.files],
        )

    def read_file(self, target: str, name: str, path: str, offset: int = 0, chunk_size: int = 0
                  ) -> Iterator[tuple[bytes, str]]:
        """``(data, sha256 of the whole file)`` chunks of ``path`` of model ``name`` on ``target``,
        from ``offset`` (bytes) to the end, ``chunk_size`` bytes each (0: the server's default).
        Closing the iterator cancels the call. Raises that hub's error as the chunks are read."""
        with contextlib.closing(self._client(target).read_file(name, path, offset=offset,
                                                              chunk_size=chunk_size)) as responses:
            for resp in responses:
                yield resp.data, resp.sha256

    def close(self) -> None:
        """Close every client (calls in flight are cancelled)."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.close()
