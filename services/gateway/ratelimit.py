"""Per-key rate limits: requests per minute and tokens (prompt + completion) per minute, on the
`limits <https://limits.readthedocs.io>`_ library (moving windows of 60 s).

The windows live in a ``limits`` storage made from a URI: ``memory://`` (the default: each
gateway process counts for itself, so with N gateway replicas behind a load balancer a key gets
up to N times its limits) or a shared one such as ``redis://host:6379`` for replicas that must
count together.

* Requests: a request is refused when the key already made ``requests_per_minute`` requests
  in the last 60 s.
* Tokens: a request is refused while the tokens the key used in the last 60 s are at or over
  ``tokens_per_minute``; a request's tokens are counted when it finishes (its usage), up to what
  the window has left (a request that overshoots fills the window; the excess is not carried
  over), and the next requests wait until the window has room again.

A refusal raises :class:`~swiftmesh.runtime.errors.ResourceExhausted` with ``retry_after`` (the
seconds until the window has room) and metadata ``openai_type`` ``requests`` or ``tokens``,
which the REST layer turns into HTTP 429 with a ``Retry-After`` header.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.errors import ConfigurationError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from swiftmesh.runtime.config import ConfigError
from swiftmesh.runtime.errors import ResourceExhausted, Unavailable

log = logging.getLogger("swiftmesh.gateway.ratelimit")

#: Seconds a Redis storage may take to connect or answer before a call fails (HTTP 503).
REMOTE_TIMEOUT_S = 2.0

try:  # the errors of a storage that cannot be reached (redis:// needs the redis client)
    from redis.exceptions import RedisError as _StorageError  # type: ignore[assignment]
except ImportError:  # pragma: no cover - limits[redis] installs it
    _StorageError = OSError  # type: ignore[assignment,misc]


@contextlib.contextmanager
def _storage(uri: str) -> Iterator[None]:
    """Storage failures as Unavailable (HTTP 503, retry after 1 s) naming the storage."""
    try:
        yield
    except (_StorageError, OSError) as e:
        raise Unavailable(f"the rate-limit storage {uri.split('@')[-1]} is unreachable ({type(e).__name__}); "
                          "try again", retry_after=1.0, reason="RATE_LIMIT_STORAGE_UNAVAILABLE") from None


@dataclass(frozen=True)
class Remaining:
    """What a key has left in the current window (-1: unlimited)."""

    requests: int
    tokens: int


class RateLimiter:
    """Moving-window limits per key id (thread-safe).

    Args:
        storage_uri: where the windows are kept, a ``limits`` storage URI (default
            ``memory://``; ``redis://host:port`` shares them between gateway replicas).

    Raises:
        ConfigError: ``storage_uri`` is not a storage ``limits`` knows. A storage that cannot be
            reached is logged at start; calls then raise Unavailable (HTTP 503) until it is back.
    """

    def __init__(self, storage_uri: str = "memory://") -> None:
        try:
            # A network storage answers within REMOTE_TIMEOUT_S or the request gets 503 (never a hang).
            self.remote = not storage_uri.startswith(("memory://", "memory:"))
            options = ({"socket_timeout": REMOTE_TIMEOUT_S, "socket_connect_timeout": REMOTE_TIMEOUT_S}
                       if storage_uri.startswith(("redis://", "rediss://", "redis+unix://")) else {})
            storage = storage_from_string(storage_uri, **options)
        except ConfigurationError as e:
            raise ConfigError(f"gateway rate-limit storage {storage_uri.split('@')[-1]!r}: {e}. Check "
                              "gateway.redis_url (SWIFTMESH_GATEWAY__REDIS_URL, serve --redis-url), e.g. "
                              "redis://host:6379") from None
        self.uri = storage_uri
        if not storage.check():
            log.warning("the rate-limit storage %s is not reachable now; requests get 503 until it is",
                        storage_uri.split("@")[-1])
        self._limiter = MovingWindowRateLimiter(storage)
        self._items: dict[str, set[tuple[str, RateLimitItem]]] = {}
        self._lock = threading.Lock()

    def _item(self, key_id: str, kind: str, per_minute: int) -> RateLimitItem:
        item = RateLimitItemPerMinute(per_minute)
        self._items.setdefault(key_id, set()).add((kind, item))
        return item

    def _refuse(self, kind: str, item: RateLimitItem, key_id: str, label: str) -> ResourceExhausted:
        stats = self._limiter.get_window_stats(item, kind, key_id)
        wait = stats.reset_time - time.time()
        used = item.amount - stats.remaining
        return ResourceExhausted(
            f"Rate limit reached for {kind} per minute ({label}): limit {item.amount}, "
            f"used {used}. Please try again in {wait:.1f}s.",
            reason="RATE_LIMIT_EXCEEDED",
            retry_after=max(wait, 0.001),
            metadata={"openai_type": kind, "openai_code": "rate_limit_exceeded"},
        )

    def acquire(self, key_id: str, requests_per_minute: int, tokens_per_minute: int) -> Remaining:
        """Admit one request of ``key_id`` or raise ResourceExhausted (limits 0: unlimited).

        Returns what the key has left after this request.
        """
        if requests_per_minute <= 0 and tokens_per_minute <= 0:
            return Remaining(-1, -1)
        with self._lock, _storage(self.uri):
            requests = self._item(key_id, "requests", requests_per_minute) if requests_per_minute > 0 else None
            tokens = self._item(key_id, "tokens", tokens_per_minute) if tokens_per_minute > 0 else None
            if requests is not None and not self._limiter.test(requests, "requests", key_id):
                raise self._refuse("requests", requests, key_id, "RPM")
            if tokens is not None and not self._limiter.test(tokens, "tokens", key_id):
                raise self._refuse("tokens", tokens, key_id, "TPM")
            if requests is not None and not self._limiter.hit(requests, "requests", key_id):
                raise self._refuse("requests", requests, key_id, "RPM")
            return Remaining(
                self._limiter.get_window_stats(requests, "requests", key_id).remaining if requests else -1,
                self._limiter.get_window_stats(tokens, "tokens", key_id).remaining if tokens else -1,
            )

    def record_tokens(self, key_id: str, tokens: int, tokens_per_minute: int) -> None:
        """Count ``tokens`` (prompt + completion of a finished request) against ``key_id``'s
        ``tokens_per_minute`` (0: unlimited, nothing counted), up to what the window has left."""
        if tokens <= 0 or tokens_per_minute <= 0:
            return
        with self._lock:
            item = self._item(key_id, "tokens", tokens_per_minute)
            try:
                room = self._limiter.get_window_stats(item, "tokens", key_id).remaining
                if room > 0:
                    self._limiter.hit(item, "tokens", key_id, cost=min(tokens, room))
            except (_StorageError, OSError) as e:  # the request is over: count what can be counted
                log.warning("tokens of %s not counted: rate-limit storage unreachable (%s)", key_id, e)

    def forget(self, key_id: str) -> None:
        """Drop the windows of a deleted key."""
        with self._lock, _storage(self.uri):
            for kind, item in self._items.pop(key_id, ()):
                self._limiter.clear(item, kind, key_id)
