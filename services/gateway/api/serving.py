"""The request lifecycle every generation endpoint shares (the handler layer, as vLLM's
``OpenAIServing``): resolve the model, build the engine requests (:mod:`.translate`), start a
span and the metrics timer, send them through the router
(:class:`~swiftmesh.services.gateway.router.WorkerPool`), then either stream
(:mod:`.streaming`) or collect the answer, and finally report usage, metrics and errors.

Each endpoint (:mod:`.serving_chat`, :mod:`.serving_completions`) subclasses
:class:`OpenAIServing` with what differs: how a request becomes engine requests
(:meth:`~OpenAIServing.build`), the shape of the full answer (:meth:`~OpenAIServing.body`) and
of the stream's chunks (:meth:`~OpenAIServing.events`). Handlers see only the router, never an
engine; authentication and rate limits happen before (:mod:`.auth`, in :class:`RequestContext`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from opentelemetry import trace

from swiftmesh.clients.inference import GenerateRequest, GenerateResponse, ServedModel
from swiftmesh.runtime.errors import SwiftMeshError, Unavailable

from ..router import GenerationStream, WorkerPool
from .errors import APIError, from_domain
from .metrics import RequestTimer
from .protocol import ChatCompletionRequest, CompletionRequest, ParamError
from .streaming import DONE, ClientDisconnected, EventStream, StreamCloser, StreamState, watch_disconnect
from .tracing import end_span, start_span
from .translate import Choice, Usage

log = logging.getLogger("swiftmesh.gateway.api")

#: Attempts of a non-streamed request whose worker fails after it started (nothing was sent yet).
NONSTREAM_ATTEMPTS = 3

Req = TypeVar("Req", ChatCompletionRequest, CompletionRequest)


@dataclass
class RequestContext:
    """What a handler needs to know about the HTTP request besides its body."""

    request: Request | None = None
    #: Called once with the request's prompt + completion tokens when it finishes.
    on_usage: Callable[[int], None] | None = None
    start: float = field(default_factory=time.perf_counter)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Collected:
    """One generation run to its end: its choices by index, usage, first response (for the
    echoed prompt) and the worker's address."""

    choices: dict[int, Choice]
    usage: Usage
    first: GenerateResponse | None
    worker: str


class OpenAIServing(Generic[Req]):
    """One generation endpoint over a worker pool; subclasses fill in :meth:`build`,
    :meth:`body` and :meth:`events`.

    Args:
        pool: the router that picks a worker for each engine request.
    """

    #: ``gen_ai.operation.name`` of the span ("chat", "text_completion").
    operation = ""
    #: ``endpoint`` label of the request metrics ("chat", "completions").
    endpoint = ""
    #: Prefix of the response id ("chatcmpl", "cmpl").
    id_prefix = ""
    #: ``object`` of a stream chunk ("chat.completion.chunk", "text_completion").
    chunk_object = ""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    # ------------------------------------------------------------- what differs
    def build(self, req: Req, info: ServedModel, request_id: str) -> list[GenerateRequest]:
        """The engine requests of ``req`` (one per prompt). Raises ParamError/APIError (400)."""
        raise NotImplementedError

    def body(self, req: Req, results: list[Collected], request_id: str) -> tuple[dict[str, Any], Usage, list[str]]:
        """The full JSON answer of the collected generations, its usage and finish reasons."""
        raise NotImplementedError

    def events(self, req: Req, streams: list[GenerationStream], timer: RequestTimer,
               state: StreamState) -> AsyncIterator[dict[str, Any]]:
        """The stream's chunks (before the usage chunk and ``[DONE]``), keeping ``state`` up to date."""
        raise NotImplementedError

    def choices_per_prompt(self, req: Req) -> int:
        """Choices each engine request produces (``n``)."""
        return req.n or 1

    # ----------------------------------------------------------------- lifecycle
    async def handle(self, req: Req, ctx: RequestContext) -> Response:
        """Serve one request: a JSONResponse, an :class:`~.streaming.EventStream` for
        ``stream: true``, or an empty 499 when the client went away first. Domain errors
        (unknown model: NotFound, no worker: Unavailable ...) and 400s are raised for the
        error handlers."""
        info = await self.pool.resolve(req.model)
        request_id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        greqs = self.build(req, info, request_id)
        timer = RequestTimer(req.model, self.endpoint)
        timer.start = ctx.start
        span = start_span(self.operation, req, request_id)
        try:
            with trace.use_span(span, end_on_exit=False):
                timer.sent()
                if req.stream:
                    streams = await watch_disconnect(ctx.request, self._start_all(greqs))
                    if streams is None:
                        raise ClientDisconnected
                    closer = StreamCloser(streams, timer, span, ctx.on_usage)
                    state = StreamState(
                        base={"id": request_id, "object": self.chunk_object, "created": int(time.time()),
                              "model": req.model, "system_fingerprint": None},
                        include_usage=req.include_usage, choices=len(streams) * self.choices_per_prompt(req),
                        usages=[Usage() for _ in streams])
                    events = self._stream(self.events(req, streams, timer, state), state, closer)
                    return EventStream(events, closer, ctx.headers)
                results = await watch_disconnect(
                    ctx.request, asyncio.gather(*(self._collect(g, timer) for g in greqs)))
                if results is None:
                    raise ClientDisconnected
                body, usage, reasons = self.body(req, results, request_id)
        except BaseException as e:
            timer.finish(_status_of(e))
            end_span(span, None, [], None, e)
            if isinstance(e, ClientDisconnected):
                return Response(status_code=499)
            raise
        timer.finish(200, usage.prompt, usage.completion)
        end_span(span, usage, reasons, results[-1].worker)
        if ctx.on_usage:
            ctx.on_usage(usage.prompt + usage.completion)
        return JSONResponse(body, headers=ctx.headers)

    async def _start_all(self, greqs: list[GenerateRequest]) -> list[GenerationStream]:
        if len(greqs) == 1:
            return [await self.pool.generate(greqs[0])]
        results = await asyncio.gather(*(self.pool.generate(g) for g in greqs), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            for r in results:
                if isinstance(r, GenerationStream):
                    await r.aclose()
            raise errors[0]
        return list(results)  # type: ignore[arg-type]

    @staticmethod
    async def _stream(events: AsyncIterator[dict[str, Any]], state: StreamState,
                      closer: StreamCloser) -> AsyncIterator[dict[str, Any] | str]:
        """The endpoint's chunks, then the usage chunk (``include_usage``) and ``[DONE]``; an
        error mid-stream becomes an error event; the request is closed at the end."""
        status, error = 200, None
        try:
            async for payload in events:
                yield payload
            if state.include_usage:
                yield dict(state.base, choices=[], usage=state.usage().as_dict())
            yield DONE
        except SwiftMeshError as e:
            err = from_domain(e)
            status, error = err.status, e
            yield err.body()
            yield DONE
        except BaseException as e:
            status, error = 499, e
            raise
        finally:
            await closer.close(status, state.usage(), state.finish_reasons(), error)

    async def _collect(self, greq: GenerateRequest, timer: RequestTimer) -> Collected:
        """Run a generation to its end (non-streamed), failing over while nothing is returned yet."""
        tried: list[str] = []
        for attempt in range(NONSTREAM_ATTEMPTS):
            stream = await self.pool.generate(greq, exclude=tried)
            choices: dict[int, Choice] = {}
            usage = Usage()
            first_msg: GenerateResponse | None = None
            try:
                async for msg in stream:
                    if first_msg is None:
                        first_msg = msg
                    usage.take(msg)
                    for out in msg.outputs:
                        c = choices.get(out.index)
                        if c is None:
                            c = choices[out.index] = Choice()
                        if out.text:
                            c.text.append(out.text)
                        n = len(out.token_ids)
                        c.tokens += n
                        timer.generated(n)
                        if out.logprobs:
                            c.logprobs.extend(out.logprobs)
                        if out.finish_reason:
                            c.finish_reason = out.finish_reason
            except Unavailable:
                tried.append(stream.worker.address)
                if attempt == NONSTREAM_ATTEMPTS - 1:
                    raise
                log.warning("request %s: worker %s failed mid-generation; retrying elsewhere",
                            greq.request_id, stream.worker.address)
                continue
            finally:
                await stream.aclose()
            if not usage.seen:
                usage.completion = sum(c.tokens for c in choices.values())
            return Collected(choices, usage, first_msg, stream.worker.address)
        raise AssertionError("unreachable")


def _status_of(e: BaseException) -> int:
    if isinstance(e, APIError):
        return e.status
    if isinstance(e, SwiftMeshError):
        return from_domain(e).status
    if isinstance(e, ParamError):
        return 400
    if isinstance(e, (asyncio.CancelledError, ClientDisconnected)):
        return 499
    return 500
