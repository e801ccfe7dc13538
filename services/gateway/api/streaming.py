"""Server-sent events of streamed requests (``stream: true``).

A stream is ``text/event-stream``: one ``data: {json}`` event per chunk and a last
``data: [DONE]`` (the framing the OpenAI SDK reads), framed here and sent by Starlette's
``StreamingResponse``. Not ``sse-starlette``: its per-event encoding and per-send timeout scope
cost about 7 us of CPU per chunk (measured, a third of the gateway's frontend CPU per token
against the vLLM server), and a chunk of JSON, which never holds a raw newline, needs none of
its multi-line, comment or retry handling. It starts only once the worker produced its
first response, so errors before that are ordinary HTTP errors; an error after that is sent as
a ``data: {"error": ...}`` event (the OpenAI SDK raises it). Closing the HTTP connection cancels
the generations, which aborts the requests in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from opentelemetry.trace import Span

from ..router import GenerationStream
from .metrics import RequestTimer
from .tracing import end_span
from .translate import Usage

#: The last event of every stream.
DONE = "[DONE]"

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class ClientDisconnected(Exception):
    """The HTTP client went away before the answer; the engine request was aborted."""


async def watch_disconnect(request: Request | None, work: Awaitable):
    """Run ``work``; if the HTTP client goes away first, cancel it (aborting the engine
    request) and return None."""
    if request is None:
        return await work
    task = asyncio.ensure_future(work)

    async def listen() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    listener = asyncio.ensure_future(listen())
    try:
        done, _ = await asyncio.wait({task, listener}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        listener.cancel()
        raise
    if task in done:
        listener.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):  # cancelled on purpose
        await task
    return None


async def merge(streams: list[GenerationStream]) -> AsyncIterator[tuple[int, Any]]:
    """Messages of several generations as they come, tagged with the stream's position."""
    if len(streams) == 1:
        async for msg in streams[0]:
            yield 0, msg
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, s: GenerationStream) -> None:
        try:
            async for msg in s:
                await queue.put((i, msg))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            await queue.put((i, e))
            return
        await queue.put((i, done))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            i, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()


@dataclass
class StreamState:
    """What an endpoint's event generator tells the request lifecycle while it streams: the
    chunks' common fields (``base``: id, object, created, model), the usage of each generation,
    the tokens and finish reason of each choice (``choices`` in all)."""

    base: dict[str, Any]
    include_usage: bool
    choices: int
    usages: list[Usage]
    counts: dict[int, int] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)

    def chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        """One chunk: ``base`` with these choices (and ``usage: null`` when usage is asked for)."""
        payload = dict(self.base, choices=choices)
        if self.include_usage:
            payload["usage"] = None
        return payload

    def usage(self) -> Usage:
        """The request's usage: the engines' counts if every generation sent one, else the
        tokens counted in the stream."""
        total = Usage()
        total.prompt = sum(u.prompt for u in self.usages)
        if all(u.seen for u in self.usages):
            total.completion = sum(u.completion for u in self.usages)
        else:
            total.completion = sum(self.counts.values())
        return total

    def finish_reasons(self) -> list[str]:
        """The finish reason of every choice ("" for a choice that did not finish)."""
        return [self.reasons.get(i, "") for i in range(self.choices)]


class StreamCloser:
    """Ends a streamed request exactly once: closes its generations (aborting unfinished engine
    requests), reports metrics, the span and the token usage. The event generator calls it when
    it ends; the response calls it too, for a client gone before the generator ever ran."""

    def __init__(self, streams: list[GenerationStream], timer: RequestTimer, span: Span,
                 on_usage: Callable[[int], None] | None) -> None:
        self.streams = streams
        self.timer = timer
        self.span = span
        self.on_usage = on_usage
        self.closed = False

    async def close(self, status: int = 499, usage: Usage | None = None, reasons: list[str] | None = None,
                    error: BaseException | None = None) -> None:
        """Close once with the HTTP status the request ended with (499: the client went away)."""
        if self.closed:
            return
        self.closed = True
        try:
            for s in self.streams:
                await s.aclose()
        finally:
            usage = usage or Usage()
            self.timer.finish(status, usage.prompt, usage.completion)
            end_span(self.span, usage, reasons or [], self.streams[0].worker.address if self.streams else None,
                     error if error is not None or status == 200 else ClientDisconnected("client disconnected"))
            if self.on_usage:
                self.on_usage(usage.prompt + usage.completion)


class EventStream(StreamingResponse):
    """``text/event-stream`` of JSON payloads (``data: {json}\\n\\n``; a str payload such as
    :data:`DONE` is sent as it is) whose request is closed whatever happens to the response.

    Args:
        payloads: the events: dicts (sent as compact JSON) or str.
        closer: ends the request (generations, metrics, span, usage) when the response ends.
        headers: extra response headers (rate-limit headers, request id).
    """

    def __init__(self, payloads: AsyncIterator[dict[str, Any] | str], closer: StreamCloser,
                 headers: dict[str, str]) -> None:
        self._payloads = payloads
        self._closer = closer
        super().__init__(self._encode(), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})

    async def _encode(self) -> AsyncIterator[bytes]:
        async for payload in self._payloads:
            yield b"data: " + (payload if isinstance(payload, str) else _dumps(payload)).encode() + b"\n\n"

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(Exception):
                await self._payloads.aclose()  # runs the generator's own cleanup if it was suspended
            await self._closer.close()
