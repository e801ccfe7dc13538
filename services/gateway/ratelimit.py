"""Per-key rate limits: requests per minute and tokens (prompt + completion) per minute.

Sliding windows of 60 s kept in memory by each gateway process (so with N gateway replicas
behind a load balancer a key gets up to N times its limits; put the limits in proportion).

* Requests: a request is refused when the key already made ``requests_per_minute`` requests
  in the last 60 s.
* Tokens: a request is refused while the tokens the key used in the last 60 s are at or over
  ``tokens_per_minute``; a request's tokens are counted when it finishes (its usage), so one
  request can overshoot the limit, and the next ones wait until the window has room again.

A refusal raises :class:`~swiftmesh.runtime.errors.ResourceExhausted` with ``retry_after`` (the
seconds until the window has room) and metadata ``openai_type`` ``requests`` or ``tokens``,
which the REST layer turns into HTTP 429 with a ``Retry-After`` header.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from swiftmesh.runtime.errors import ResourceExhausted

WINDOW_S = 60.0


@dataclass
class _Window:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0

    def trim(self, now: float) -> None:
        edge = now - WINDOW_S
        while self.requests and self.requests[0] <= edge:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= edge:
            self.token_sum -= self.tokens.popleft()[1]


@dataclass(frozen=True)
class Remaining:
    """What a key has left in the current window (-1: unlimited)."""

    requests: int
    tokens: int


class RateLimiter:
    """Sliding-window limits per key id (thread-safe)."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def acquire(self, key_id: str, requests_per_minute: int, tokens_per_minute: int) -> Remaining:
        """Admit one request of ``key_id`` or raise ResourceExhausted (limits 0: unlimited).

        Returns what the key has left after this request.
        """
        if requests_per_minute <= 0 and tokens_per_minute <= 0:
            return Remaining(-1, -1)
        now = self._clock()
        with self._lock:
            w = self._windows.setdefault(key_id, _Window())
            w.trim(now)
            if requests_per_minute > 0 and len(w.requests) >= requests_per_minute:
                wait = w.requests[len(w.requests) - requests_per_minute] + WINDOW_S - now
                raise ResourceExhausted(
                    f"Rate limit reached for requests per minute (RPM): limit {requests_per_minute}, "
                    f"used {len(w.requests)}. Please try again in {wait:.1f}s.",
                    reason="RATE_LIMIT_EXCEEDED",
                    retry_after=max(wait, 0.001),
                    metadata={"openai_type": "requests", "openai_code": "rate_limit_exceeded"},
                )
            if tokens_per_minute > 0 and w.token_sum >= tokens_per_minute:
                # Wait until enough old usage leaves the window to drop below the limit.
                excess = w.token_sum - tokens_per_minute + 1
                freed, wait = 0, WINDOW_S
                for ts, n in w.tokens:
                    freed += n
                    if freed >= excess:
                        wait = ts + WINDOW_S - now
                        break
                raise ResourceExhausted(
                    f"Rate limit reached for tokens per minute (TPM): limit {tokens_per_minute}, "
                    f"used {w.token_sum}. Please try again in {wait:.1f}s.",
                    reason="RATE_LIMIT_EXCEEDED",
                    retry_after=max(wait, 0.001),
                    metadata={"openai_type": "tokens", "openai_code": "rate_limit_exceeded"},
                )
            w.requests.append(now)
            return Remaining(
                requests_per_minute - len(w.requests) if requests_per_minute > 0 else -1,
                tokens_per_minute - w.token_sum if tokens_per_minute > 0 else -1,
            )

    def record_tokens(self, key_id: str, tokens: int) -> None:
        """Count ``tokens`` (prompt + completion of a finished request) against ``key_id``."""
        if tokens <= 0:
            return
        now = self._clock()
        with self._lock:
            w = self._windows.get(key_id)
            if w is None:
                return  # the key has no token limit (acquire never made a window)
            w.trim(now)
            w.tokens.append((now, tokens))
            w.token_sum += tokens

    def forget(self, key_id: str) -> None:
        with self._lock:
            self._windows.pop(key_id, None)
