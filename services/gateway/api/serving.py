"""Request handlers of the OpenAI API: chat and text completions (the handler layer).

They translate protocol models (:mod:`.protocol`) into ``InferenceService`` GenerateRequests,
send them through the :class:`~swiftmesh.services.gateway.router.WorkerPool`, and turn the
worker's responses into OpenAI responses or server-sent events. They see only the gRPC
contract (``inference.proto``), never an engine.

Streams (``stream: true``) are ``text/event-stream``: one ``data: {json}`` event per chunk and
a last ``data: [DONE]``. A stream starts only once the worker produced its first response, so
errors before that (bad parameters, unknown model, no worker) are ordinary HTTP errors; an
error after that is sent as a ``data: {"error": ...}`` event (the OpenAI SDK raises it).
Closing the HTTP connection cancels the gRPC call, which aborts the request in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from swiftmesh.gateway.v1 import inference_pb2 as pb
from swiftmesh.runtime.errors import SwiftMeshError, Unavailable

from ..router import GenerationStream, WorkerPool
from .errors import APIError, from_domain
from .metrics import RequestTimer
from .protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    NamedToolChoice,
    ParamError,
    ResponseFormat,
    SamplingFields,
)

log = logging.getLogger("swiftmesh.gateway.api")
_tracer = trace.get_tracer("swiftmesh.gateway")

#: Temperatures below this are greedy (vLLM's _SAMPLING_EPS).
SAMPLING_EPS = 1e-5
#: Attempts of a non-streamed request whose worker fails after it started (nothing was sent yet).
NONSTREAM_ATTEMPTS = 3

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
DONE = b"data: [DONE]\n\n"


class ClientDisconnected(Exception):
    """The HTTP client went away before the answer; the engine request was aborted."""


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + _dumps(payload).encode() + b"\n\n"


@dataclass
class RequestContext:
    """What a handler needs to know about the HTTP request besides its body."""

    request: Request | None = None
    #: Called once with the request's prompt + completion tokens when it finishes.
    on_usage: Callable[[int], None] | None = None
    start: float = field(default_factory=time.perf_counter)
    headers: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------- translation
def _structured(fmt: ResponseFormat | None) -> pb.StructuredOutput | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return pb.StructuredOutput(json_object=True)
    schema = (fmt.json_schema.schema_ if fmt.json_schema else None) or {"type": "object"}
    return pb.StructuredOutput(json_schema=json.dumps(schema))


def _sampling(req: SamplingFields, max_tokens: int, logprobs: int, prompt_logprobs: int = -1) -> pb.SamplingParams:
    s = pb.SamplingParams(
        max_tokens=max_tokens,
        n=req.n or 1,
        stop=req.stop_list(),
        stop_token_ids=req.stop_token_ids or [],
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        ignore_eos=bool(req.ignore_eos),
        min_tokens=req.min_tokens or 0,
        top_k=req.top_k or 0,
        min_p=req.min_p or 0.0,
    )
    if req.temperature is not None:
        # As vLLM: a temperature this small is greedy (dividing logits by it would overflow).
        s.temperature = req.temperature if req.temperature >= SAMPLING_EPS else 0.0
    if req.top_p is not None:
        s.top_p = req.top_p
    if req.seed is not None:
        s.seed = req.seed
    if req.repetition_penalty is not None:
        s.repetition_penalty = req.repetition_penalty
    if req.skip_special_tokens is not None:
        s.skip_special_tokens = req.skip_special_tokens
    if req.logit_bias:
        for k, v in req.logit_bias.items():
            s.logit_bias[int(k)] = float(v)
    return s


def _check_limits(req: SamplingFields, info: pb.ServedModel, max_tokens: int, param: str) -> None:
    if info.max_model_len and max_tokens > info.max_model_len:
        raise ParamError(
            f"{param} is {max_tokens}, more than the context length of model {info.id!r} ({info.max_model_len})",
            param, "above_max_value",
        )
    if req.min_tokens and max_tokens and req.min_tokens > max_tokens:
        raise ParamError(f"min_tokens ({req.min_tokens}) must not exceed {param} ({max_tokens})", "min_tokens")


def _tool_schema(req: ChatCompletionRequest) -> tuple[str | None, dict | None]:
    """For a forced tool_choice: ("named", schema) or ("required", schema) (None, None) otherwise."""
    choice = req.tool_choice
    if isinstance(choice, NamedToolChoice):
        tool = next(t for t in req.tools or [] if t.function.name == choice.function.name)
        return "named", tool.function.parameters or {"type": "object"}
    if choice == "required":
        variants = [
            {
                "type": "object",
                "properties": {"name": {"type": "string", "enum": [t.function.name]},
                               "parameters": t.function.parameters or {"type": "object"}},
                "required": ["name", "parameters"],
            }
            for t in req.tools or []
        ]
        return "required", {"type": "array", "minItems": 1, "items": {"anyOf": variants}}
    return None, None


def chat_generate_request(req: ChatCompletionRequest, info: pb.ServedModel, request_id: str) -> pb.GenerateRequest:
    """The GenerateRequest of a chat completion (the worker renders the chat template)."""
    if not info.has_chat_template:
        raise APIError(
            400,
            f"model {info.id!r} has no chat template, so it cannot serve chat completions; "
            "use /v1/completions with a plain prompt",
            param="model", code="model_has_no_chat_template",
        )
    max_tokens = req.output_limit or 0
    _check_limits(req, info, max_tokens, "max_completion_tokens" if req.max_completion_tokens else "max_tokens")
    logprobs = (req.top_logprobs or 0) if req.logprobs else -1
    sampling = _sampling(req, max_tokens, logprobs)
    _mode, schema = _tool_schema(req)
    structured = pb.StructuredOutput(json_schema=json.dumps(schema)) if schema is not None else _structured(req.response_format)
    if structured is not None:
        sampling.structured_output.CopyFrom(structured)
    messages = []
    for m in req.messages:
        messages.append(pb.ChatMessage(
            role=m.role, content=m.text(), name=m.name or "", tool_call_id=m.tool_call_id or "",
            tool_calls_json=json.dumps(m.tool_calls) if m.tool_calls else "",
        ))
    chat = pb.ChatPrompt(messages=messages)
    if req.add_generation_prompt is not None:
        chat.add_generation_prompt = req.add_generation_prompt
    if req.tools and req.tool_choice not in (None, "none"):
        chat.tools_json = json.dumps([t.model_dump(exclude_none=True) for t in req.tools])
    if req.chat_template_kwargs:
        chat.chat_template_kwargs_json = json.dumps(req.chat_template_kwargs)
    return pb.GenerateRequest(request_id=request_id, model=req.model, chat=chat, sampling=sampling, stream=True)


def completion_generate_requests(
    req: CompletionRequest, info: pb.ServedModel, request_id: str
) -> list[pb.GenerateRequest]:
    """One GenerateRequest per prompt. ``max_tokens`` 0 with ``echo`` asks for one token (dropped
    from the answer): the worker contract has no "prompt only" mode."""
    max_tokens = req.max_tokens if req.max_tokens is not None else 16
    _check_limits(req, info, max_tokens, "max_tokens")
    logprobs = req.logprobs if req.logprobs is not None else -1
    prompt_logprobs = logprobs if (req.echo and req.logprobs is not None) else -1
    sampling = _sampling(req, max(max_tokens, 1), logprobs, prompt_logprobs)
    structured = _structured(req.response_format)
    if structured is not None:
        sampling.structured_output.CopyFrom(structured)
    prompts = req.prompts()
    out = []
    for i, p in enumerate(prompts):
        rid = request_id if len(prompts) == 1 else f"{request_id}-{i}"
        g = pb.GenerateRequest(request_id=rid, model=req.model, sampling=sampling, stream=True, echo=bool(req.echo))
        if isinstance(p, str):
            g.text = p
        else:
            g.token_ids.ids.extend(p)
        out.append(g)
    return out


# --------------------------------------------------------------------------- output shapes
def _chat_logprobs(items, k: int) -> list[dict[str, Any]]:
    out = []
    for lp in items:
        out.append({
            "token": lp.token,
            "logprob": lp.logprob if lp.HasField("logprob") else -9999.0,
            "bytes": list(lp.token.encode("utf-8")),
            "top_logprobs": [
                {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode("utf-8"))}
                for t in lp.top_logprobs[:k]
            ],
        })
    return out


class _CompletionLogprobs:
    """Accumulates the parallel lists of legacy completions logprobs."""

    __slots__ = ("k", "offset", "text_offset", "token_logprobs", "tokens", "top_logprobs")

    def __init__(self, k: int, offset: int = 0) -> None:
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []
        self.offset = offset
        self.k = k

    def add(self, items, first_is_prompt_start: bool = False) -> dict[str, Any]:
        """Add tokens; returns the delta as a logprobs object (for a stream chunk)."""
        delta = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for i, lp in enumerate(items):
            has = lp.HasField("logprob")
            value = lp.logprob if has else None
            top: dict[str, float] | None
            if not has and (first_is_prompt_start and i == 0):
                top = None
            else:
                top = {t.token: t.logprob for t in lp.top_logprobs[: self.k]}
                if has and lp.token not in top and self.k > 0:
                    top[lp.token] = lp.logprob
            for lst, v in ((delta["tokens"], lp.token), (delta["token_logprobs"], value),
                           (delta["top_logprobs"], top), (delta["text_offset"], self.offset)):
                lst.append(v)
            self.offset += len(lp.token)
        self.tokens += delta["tokens"]
        self.token_logprobs += delta["token_logprobs"]
        self.top_logprobs += delta["top_logprobs"]
        self.text_offset += delta["text_offset"]
        return delta

    def as_dict(self) -> dict[str, Any]:
        return {"text_offset": self.text_offset, "token_logprobs": self.token_logprobs,
                "tokens": self.tokens, "top_logprobs": self.top_logprobs}


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    tokens: int = 0
    logprobs: list = field(default_factory=list)
    finish_reason: str | None = None


class _Usage:
    __slots__ = ("completion", "prompt", "seen")

    def __init__(self) -> None:
        self.prompt = 0
        self.completion = 0
        self.seen = False

    def take(self, msg: pb.GenerateResponse) -> None:
        if msg.HasField("usage"):
            self.prompt = msg.usage.prompt_tokens
            self.completion = msg.usage.completion_tokens
            self.seen = True

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt, "completion_tokens": self.completion,
                "total_tokens": self.prompt + self.completion}


def _finish_reason(reason: str) -> str | None:
    return reason or None


# ------------------------------------------------------------------------------- tracing
def _start_span(operation: str, req: ChatCompletionRequest | CompletionRequest, request_id: str) -> Span:
    span = _tracer.start_span(f"{operation} {req.model}", kind=SpanKind.CLIENT)
    if span.is_recording():
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": "swiftmesh",
            "gen_ai.request.model": req.model,
            "gen_ai.response.id": request_id,
            "gen_ai.request.choice.count": req.n or 1,
            "gen_ai.request.stream": bool(req.stream),
        }
        max_tokens = req.output_limit if isinstance(req, ChatCompletionRequest) else req.max_tokens
        for key, value in (("max_tokens", max_tokens), ("temperature", req.temperature), ("top_p", req.top_p),
                           ("top_k", req.top_k), ("seed", req.seed),
                           ("frequency_penalty", req.frequency_penalty), ("presence_penalty", req.presence_penalty)):
            if value is not None:
                attrs[f"gen_ai.request.{key}"] = value
        if req.stop_list():
            attrs["gen_ai.request.stop_sequences"] = req.stop_list()
        fmt = getattr(req, "response_format", None)
        attrs["gen_ai.output.type"] = "json" if fmt is not None and fmt.type != "text" else "text"
        span.set_attributes(attrs)
    return span


def _end_span(span: Span, usage: _Usage | None, reasons: list[str], worker: str | None,
              error: BaseException | None = None) -> None:
    if span.is_recording():
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.prompt)
            span.set_attribute("gen_ai.usage.output_tokens", usage.completion)
        if reasons:
            span.set_attribute("gen_ai.response.finish_reasons", reasons)
        if worker:
            span.set_attribute("swiftmesh.worker", worker)
            host, _, port = worker.rpartition(":")
            span.set_attribute("server.address", host)
            if port.isdigit():
                span.set_attribute("server.port", int(port))
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, str(error)))
            span.set_attribute("error.type", type(error).__name__)
    span.end()


# ------------------------------------------------------------------------------ handlers
async def _watch_disconnect(request: Request | None, work: Awaitable):
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


class OpenAIServing:
    """The chat and completions handlers over a worker pool."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    # ------------------------------------------------------------------------- chat
    async def chat(self, req: ChatCompletionRequest, ctx: RequestContext):
        """Handle ``POST /v1/chat/completions``; returns a JSONResponse or a StreamingResponse."""
        info = await self.pool.resolve(req.model)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        with _unicode_guard():
            greq = chat_generate_request(req, info, request_id)
        timer = RequestTimer(req.model, "chat")
        timer.start = ctx.start
        span = _start_span("chat", req, request_id)
        mode, _ = _tool_schema(req)
        try:
            with trace.use_span(span, end_on_exit=False):
                timer.sent()
                if req.stream:
                    stream = await _watch_disconnect(ctx.request, self.pool.generate(greq))
                    if stream is None:
                        raise ClientDisconnected
                    closer = _StreamCloser([stream], timer, span, ctx)
                    return _event_stream(self._chat_events(req, stream, request_id, timer, closer, mode), closer, ctx)
                result = await _watch_disconnect(ctx.request, self._chat_full(req, greq, request_id, timer, mode))
                if result is None:
                    raise ClientDisconnected
                body, usage, reasons, worker = result
        except BaseException as e:
            timer.finish(_status_of(e))
            _end_span(span, None, [], None, e)
            if isinstance(e, ClientDisconnected):
                return Response(status_code=499)
            raise
        timer.finish(200, usage.prompt, usage.completion)
        _end_span(span, usage, reasons, worker)
        if ctx.on_usage:
            ctx.on_usage(usage.prompt + usage.completion)
        return JSONResponse(body, headers=ctx.headers)

    async def _collect(self, greq: pb.GenerateRequest, timer: RequestTimer):
        """Run a generation to its end (non-streamed), failing over while nothing is returned yet.
        Returns (choices, usage, first message, worker address)."""
        tried: list[str] = []
        for attempt in range(NONSTREAM_ATTEMPTS):
            stream = await self.pool.generate(greq, exclude=tried)
            choices: dict[int, _Choice] = {}
            usage = _Usage()
            first_msg: pb.GenerateResponse | None = None
            try:
                async for msg in stream:
                    if first_msg is None:
                        first_msg = msg
                    usage.take(msg)
                    for out in msg.outputs:
                        c = choices.get(out.index)
                        if c is None:
                            c = choices[out.index] = _Choice()
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
            return choices, usage, first_msg, stream.worker.address
        raise AssertionError("unreachable")

    async def _chat_full(self, req: ChatCompletionRequest, greq: pb.GenerateRequest, request_id: str,
                         timer: RequestTimer, mode: str | None):
        choices, usage, _, worker = await self._collect(greq, timer)
        k = req.top_logprobs or 0
        out_choices = []
        for index in range(req.n or 1):
            c = choices.get(index, _Choice(finish_reason="abort"))
            text = "".join(c.text)
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
            finish = _finish_reason(c.finish_reason or "")
            if mode is not None:
                calls = _tool_calls(mode, req, text)
                if calls is not None:
                    message["content"] = None
                    message["tool_calls"] = calls
                    if mode == "required" and finish == "stop":
                        finish = "tool_calls"
            out_choices.append({
                "index": index,
                "message": message,
                "logprobs": {"content": _chat_logprobs(c.logprobs, k), "refusal": None} if req.logprobs else None,
                "finish_reason": finish,
            })
        body = {
            "id": request_id, "object": "chat.completion", "created": int(time.time()), "model": req.model,
            "choices": out_choices, "usage": usage.as_dict(), "system_fingerprint": None, "service_tier": None,
        }
        return body, usage, [c["finish_reason"] or "" for c in out_choices], worker

    async def _chat_events(self, req: ChatCompletionRequest, stream: GenerationStream, request_id: str,
                           timer: RequestTimer, closer: _StreamCloser, mode: str | None) -> AsyncIterator[bytes]:
        created = int(time.time())
        include_usage = req.include_usage
        n = req.n or 1
        k = req.top_logprobs or 0
        want_logprobs = bool(req.logprobs)
        base: dict[str, Any] = {"id": request_id, "object": "chat.completion.chunk", "created": created,
                                "model": req.model, "system_fingerprint": None}

        def chunk(choices: list[dict[str, Any]]) -> bytes:
            payload = dict(base, choices=choices)
            if include_usage:
                payload["usage"] = None
            return _sse(payload)

        usage = _Usage()
        reasons: dict[int, str] = {}
        counts: dict[int, int] = {}
        buffered: dict[int, list[str]] = {}  # tool_choice "required": arguments are parsed at the end
        call_ids = {i: f"call_{uuid.uuid4().hex[:24]}" for i in range(n)} if mode else {}
        status, error = 200, None
        try:
            for i in range(n):
                delta: dict[str, Any] = {"role": "assistant", "content": "" if mode is None else None}
                if mode == "named":
                    delta["tool_calls"] = [{"index": 0, "id": call_ids[i], "type": "function",
                                            "function": {"name": req.tool_choice.function.name, "arguments": ""}}]
                yield chunk([{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}])
            async for msg in stream:
                usage.take(msg)
                for out in msg.outputs:
                    ntok = len(out.token_ids)
                    timer.generated(ntok)
                    counts[out.index] = counts.get(out.index, 0) + ntok
                    if out.text or (want_logprobs and out.logprobs):
                        if mode == "required":
                            buffered.setdefault(out.index, []).append(out.text)
                        else:
                            if mode == "named":
                                delta = {"tool_calls": [{"index": 0, "function": {"arguments": out.text}}]}
                            else:
                                delta = {"content": out.text}
                            yield chunk([{
                                "index": out.index, "delta": delta,
                                "logprobs": {"content": _chat_logprobs(out.logprobs, k), "refusal": None}
                                if want_logprobs else None,
                                "finish_reason": None,
                            }])
                    if out.finish_reason:
                        reason = out.finish_reason
                        if mode == "required":
                            text = "".join(buffered.pop(out.index, []))
                            calls = _tool_calls(mode, req, text)
                            if calls is not None:
                                tc = [dict(c, index=j) for j, c in enumerate(calls)]
                                yield chunk([{"index": out.index, "delta": {"tool_calls": tc}, "logprobs": None,
                                              "finish_reason": None}])
                                if reason == "stop":
                                    reason = "tool_calls"
                            else:
                                yield chunk([{"index": out.index, "delta": {"content": text}, "logprobs": None,
                                              "finish_reason": None}])
                        reasons[out.index] = reason
                        yield chunk([{"index": out.index, "delta": {}, "logprobs": None, "finish_reason": reason}])
            if not usage.seen:
                usage.completion = sum(counts.values())
            if include_usage:
                yield _sse(dict(base, choices=[], usage=usage.as_dict()))
            yield DONE
        except SwiftMeshError as e:
            err = from_domain(e)
            status, error = err.status, e
            yield _sse(err.body())
            yield DONE
        except BaseException as e:
            status, error = 499, e
            raise
        finally:
            if not usage.seen:
                usage.completion = sum(counts.values())
            await closer.close(status, usage, [reasons.get(i, "") for i in range(n)], error)

    # ------------------------------------------------------------------ completions
    async def completions(self, req: CompletionRequest, ctx: RequestContext):
        """Handle ``POST /v1/completions``; returns a JSONResponse or a StreamingResponse."""
        info = await self.pool.resolve(req.model)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        with _unicode_guard():
            greqs = completion_generate_requests(req, info, request_id)
        timer = RequestTimer(req.model, "completions")
        timer.start = ctx.start
        span = _start_span("text_completion", req, request_id)
        try:
            with trace.use_span(span, end_on_exit=False):
                timer.sent()
                if req.stream:
                    streams = await _watch_disconnect(ctx.request, self._start_all(greqs))
                    if streams is None:
                        raise ClientDisconnected
                    closer = _StreamCloser(streams, timer, span, ctx)
                    return _event_stream(self._completion_events(req, streams, request_id, timer, closer), closer, ctx)
                result = await _watch_disconnect(ctx.request, self._completion_full(req, greqs, request_id, timer))
                if result is None:
                    raise ClientDisconnected
                body, usage, reasons, worker = result
        except BaseException as e:
            timer.finish(_status_of(e))
            _end_span(span, None, [], None, e)
            if isinstance(e, ClientDisconnected):
                return Response(status_code=499)
            raise
        timer.finish(200, usage.prompt, usage.completion)
        _end_span(span, usage, reasons, worker)
        if ctx.on_usage:
            ctx.on_usage(usage.prompt + usage.completion)
        return JSONResponse(body, headers=ctx.headers)

    async def _start_all(self, greqs: list[pb.GenerateRequest]) -> list[GenerationStream]:
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

    def _completion_choice(self, req: CompletionRequest, index: int, c: _Choice, first: pb.GenerateResponse | None):
        k = req.logprobs or 0
        score_only = req.max_tokens == 0
        text = "".join(c.text)
        prefix = ""
        lp = _CompletionLogprobs(k) if req.logprobs is not None else None
        if req.echo and first is not None:
            prefix = first.prompt_text
            if lp is not None and first.prompt_logprobs:
                lp.add(first.prompt_logprobs, first_is_prompt_start=True)
        if score_only:
            text, finish = "", "length"
        else:
            finish = _finish_reason(c.finish_reason or "")
            if lp is not None:
                lp.add(c.logprobs)
        return {"index": index, "text": prefix + text, "logprobs": lp.as_dict() if lp is not None else None,
                "finish_reason": finish}

    async def _completion_full(self, req: CompletionRequest, greqs: list[pb.GenerateRequest], request_id: str,
                               timer: RequestTimer):
        results = await asyncio.gather(*(self._collect(g, timer) for g in greqs))
        n = req.n or 1
        choices_out = []
        total = _Usage()
        reasons: list[str] = []
        worker = None
        for p, (choices, usage, first, worker) in enumerate(results):
            total.prompt += usage.prompt
            total.completion += 0 if req.max_tokens == 0 else usage.completion
            for i in range(n):
                c = choices.get(i, _Choice(finish_reason="abort"))
                choice = self._completion_choice(req, p * n + i, c, first)
                reasons.append(choice["finish_reason"] or "")
                choices_out.append(choice)
        body = {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": req.model,
                "choices": choices_out, "usage": total.as_dict(), "system_fingerprint": None}
        return body, total, reasons, worker

    async def _completion_events(self, req: CompletionRequest, streams: list[GenerationStream], request_id: str,
                                 timer: RequestTimer, closer: _StreamCloser) -> AsyncIterator[bytes]:
        created = int(time.time())
        include_usage = req.include_usage
        n = req.n or 1
        k = req.logprobs or 0
        want_logprobs = req.logprobs is not None
        base: dict[str, Any] = {"id": request_id, "object": "text_completion", "created": created,
                                "model": req.model, "system_fingerprint": None}

        def chunk(choices: list[dict[str, Any]]) -> bytes:
            payload = dict(base, choices=choices)
            if include_usage:
                payload["usage"] = None
            return _sse(payload)

        usages = [_Usage() for _ in streams]
        counts: dict[int, int] = {}
        reasons: dict[int, str] = {}
        offsets: dict[int, _CompletionLogprobs] = {}
        echoed: set[int] = set()
        status, error = 200, None
        try:
            async for p, msg in _merge(streams):
                usages[p].take(msg)
                prefix_text = ""
                prefix_lp: list = []
                if req.echo and msg.prompt_text:
                    prefix_text = msg.prompt_text
                    prefix_lp = list(msg.prompt_logprobs)
                for out in msg.outputs:
                    index = p * n + out.index
                    ntok = len(out.token_ids)
                    timer.generated(ntok)
                    counts[index] = counts.get(index, 0) + ntok
                    lp = offsets.get(index)
                    if lp is None and want_logprobs:
                        lp = offsets[index] = _CompletionLogprobs(k)
                    text = out.text
                    lp_delta: dict[str, Any] | None = None
                    if req.echo and index not in echoed:
                        echoed.add(index)
                        if not prefix_text:
                            prefix_text = msg.prompt_text
                        text = prefix_text + text
                        if lp is not None and prefix_lp:
                            lp_delta = lp.add(prefix_lp, first_is_prompt_start=True)
                    if lp is not None:
                        d = lp.add(out.logprobs)
                        if lp_delta is None:
                            lp_delta = d
                        else:
                            for key in lp_delta:
                                lp_delta[key] += d[key]
                    if text or out.finish_reason or (lp_delta and lp_delta["tokens"]):
                        reason = out.finish_reason or None
                        if reason:
                            reasons[index] = reason
                        yield chunk([{"index": index, "text": text, "logprobs": lp_delta, "finish_reason": reason}])
            prompt = sum(u.prompt for u in usages)
            completion = sum(u.completion for u in usages) if all(u.seen for u in usages) else sum(counts.values())
            if include_usage:
                yield _sse(dict(base, choices=[], usage={"prompt_tokens": prompt, "completion_tokens": completion,
                                                         "total_tokens": prompt + completion}))
            yield DONE
        except SwiftMeshError as e:
            err = from_domain(e)
            status, error = err.status, e
            yield _sse(err.body())
            yield DONE
        except BaseException as e:
            status, error = 499, e
            raise
        finally:
            total = _Usage()
            total.prompt = sum(u.prompt for u in usages)
            total.completion = sum(u.completion for u in usages) if all(u.seen for u in usages) else sum(counts.values())
            await closer.close(status, total, [reasons.get(i, "") for i in range(len(streams) * n)], error)


class _StreamCloser:
    """Ends a streamed request exactly once: closes its generations (aborting unfinished engine
    requests), reports metrics, the span and the token usage. The event generator calls it when
    it ends; the response calls it too, for a client gone before the generator ever ran."""

    def __init__(self, streams: list[GenerationStream], timer: RequestTimer, span: Span, ctx: RequestContext) -> None:
        self.streams = streams
        self.timer = timer
        self.span = span
        self.ctx = ctx
        self.closed = False

    async def close(self, status: int = 499, usage: _Usage | None = None, reasons: list[str] | None = None,
                    error: BaseException | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            for s in self.streams:
                await s.aclose()
        finally:
            usage = usage or _Usage()
            self.timer.finish(status, usage.prompt, usage.completion)
            _end_span(self.span, usage, reasons or [], self.streams[0].worker.address if self.streams else None,
                      error if error is not None or status == 200 else ClientDisconnected("client disconnected"))
            if self.ctx.on_usage:
                self.ctx.on_usage(usage.prompt + usage.completion)


class _EventStreamResponse(StreamingResponse):
    """A text/event-stream whose request is closed whatever happens to the response."""

    def __init__(self, events: AsyncIterator[bytes], closer: _StreamCloser, headers: dict[str, str]) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._events = events
        self._closer = closer

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(Exception):
                await self._events.aclose()  # runs the generator's own cleanup if it was suspended
            await self._closer.close()


def _event_stream(events: AsyncIterator[bytes], closer: _StreamCloser, ctx: RequestContext) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **ctx.headers}
    return _EventStreamResponse(events, closer, headers)


async def _merge(streams: list[GenerationStream]) -> AsyncIterator[tuple[int, pb.GenerateResponse]]:
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


def _tool_calls(mode: str, req: ChatCompletionRequest, text: str) -> list[dict[str, Any]] | None:
    """Tool calls from the constrained output: the arguments (named) or a JSON list of
    {name, parameters} (required). None when the output does not parse (e.g. cut by max_tokens)."""
    if mode == "named":
        return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                 "function": {"name": req.tool_choice.function.name, "arguments": text}}]
    try:
        items = json.loads(text)
        return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                 "function": {"name": item["name"], "arguments": json.dumps(item.get("parameters", {}))}}
                for item in items]
    except (ValueError, TypeError, KeyError):
        return None


@contextlib.contextmanager
def _unicode_guard():
    try:
        yield
    except UnicodeEncodeError as e:
        raise ParamError(f"the request contains text that is not valid Unicode ({e.reason})",
                         None, "invalid_unicode") from None


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
