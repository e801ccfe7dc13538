"""Prometheus metrics of the REST API, per served model (label ``model``).

Names follow vLLM's serving metrics, under the ``swiftmesh_gateway_`` prefix:

* ``time_to_first_token_seconds`` (histogram): request arrival to its first generated token.
* ``time_per_output_token_seconds`` (histogram): (last token - first token) / (tokens - 1),
  per request with at least two tokens.
* ``e2e_request_latency_seconds`` (histogram): arrival to the last byte produced.
* ``prompt_tokens_total`` / ``generation_tokens_total`` (counters).
* ``requests_running`` (gauge): requests that have their first token and are still generating;
  ``requests_waiting`` (gauge): requests sent to a worker and waiting for their first token.
* ``requests_total`` (counter, labels ``model``, ``endpoint``, ``status``): finished requests
  by HTTP status (streams that fail after their start count as their in-stream error status).

The per-worker view (running, waiting, KV cache, health) is in :mod:`..router`.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 80.0)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                120.0, 240.0, 480.0, 960.0, 1920.0)

TTFT = Histogram("swiftmesh_gateway_time_to_first_token_seconds",
                 "Time from request arrival to the first generated token, seconds.", ["model"],
                 buckets=_LATENCY_BUCKETS)
TPOT = Histogram("swiftmesh_gateway_time_per_output_token_seconds",
                 "Mean time between generated tokens of a request, seconds.", ["model"], buckets=_TPOT_BUCKETS)
E2E = Histogram("swiftmesh_gateway_e2e_request_latency_seconds",
                "Time from request arrival to its last generated token, seconds.", ["model"], buckets=_E2E_BUCKETS)
PROMPT_TOKENS = Counter("swiftmesh_gateway_prompt_tokens", "Prompt tokens processed.", ["model"])
GENERATION_TOKENS = Counter("swiftmesh_gateway_generation_tokens", "Tokens generated.", ["model"])
RUNNING = Gauge("swiftmesh_gateway_requests_running", "Requests generating (first token received).", ["model"])
WAITING = Gauge("swiftmesh_gateway_requests_waiting", "Requests waiting for their first token.", ["model"])
REQUESTS = Counter("swiftmesh_gateway_requests", "Finished API requests by HTTP status.", ["model", "endpoint", "status"])


class RequestTimer:
    """Timing and token accounting of one generation request, reported once at ``finish``."""

    __slots__ = ("_done", "_state", "endpoint", "first", "last", "model", "start", "tokens")

    def __init__(self, model: str, endpoint: str, start: float | None = None) -> None:
        self.model = model
        self.endpoint = endpoint
        self.start = start if start is not None else time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        self.tokens = 0
        self._state = ""  # "", "waiting", "running"
        self._done = False

    def sent(self) -> None:
        """The request went to a worker (waiting for its first token)."""
        if not self._state:
            self._state = "waiting"
            WAITING.labels(self.model).inc()

    def generated(self, n: int) -> None:
        """``n`` new output tokens arrived."""
        if n <= 0:
            return
        now = time.perf_counter()
        if self.first is None:
            self.first = now
            TTFT.labels(self.model).observe(now - self.start)
            if self._state == "waiting":
                WAITING.labels(self.model).dec()
            self._state = "running"
            RUNNING.labels(self.model).inc()
        self.last = now
        self.tokens += n

    def finish(self, status: int, prompt_tokens: int = 0, completion_tokens: int | None = None) -> None:
        """Report the request (idempotent)."""
        if self._done:
            return
        self._done = True
        if self._state == "waiting":
            WAITING.labels(self.model).dec()
        elif self._state == "running":
            RUNNING.labels(self.model).dec()
        self._state = ""
        REQUESTS.labels(self.model, self.endpoint, str(status)).inc()
        if prompt_tokens:
            PROMPT_TOKENS.labels(self.model).inc(prompt_tokens)
        generated = self.tokens if completion_tokens is None else completion_tokens
        if generated:
            GENERATION_TOKENS.labels(self.model).inc(generated)
        if status == 200:
            end = self.last if self.last is not None else time.perf_counter()
            E2E.labels(self.model).observe(end - self.start)
            if self.first is not None and self.last is not None and self.tokens > 1:
                TPOT.labels(self.model).observe((self.last - self.first) / (self.tokens - 1))
