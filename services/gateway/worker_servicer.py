"""InferenceService (inference.proto) -> engine: translation between proto messages and the
domain types of :mod:`swiftmesh.services.gateway.engines`, nothing more.

``Generate`` streams the engine's deltas (``stream``) or one message per finished choice; when
the caller cancels the call, the engine request is aborted (its KV cache freed). Model and
adapter names are resolved to local directories by the worker's :class:`ModelSource` (the hub,
or a local path).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from google.protobuf import empty_pb2
from opentelemetry import context as otel_context
from opentelemetry import trace

from swiftmesh.gateway.v1 import inference_pb2 as pb
from swiftmesh.gateway.v1 import inference_pb2_grpc
from swiftmesh.runtime.errors import InvalidArgument

from .engines import (
    ChatMessage,
    ChatPrompt,
    Engine,
    GenerationRequest,
    RequestOutput,
    SamplingParams,
    ServedModelInfo,
    StructuredOutput,
    TokenLogprob,
)
from .engines import telemetry as tm
from .engines.processing import parse_json_list, parse_json_object

if TYPE_CHECKING:
    from .worker_server import WorkerRuntime

log = logging.getLogger("swiftmesh.worker")
_tracer = trace.get_tracer("swiftmesh.worker")


# ------------------------------------------------------------------------------ proto -> domain
def sampling_from_proto(s: pb.SamplingParams) -> SamplingParams:
    """Proto sampling parameters -> :class:`SamplingParams` (defaults as documented in the proto)."""
    structured = None
    kind = s.structured_output.WhichOneof("kind") if s.HasField("structured_output") else None
    if kind == "json_object" and s.structured_output.json_object:
        structured = StructuredOutput("json_object")
    elif kind == "json_schema":
        structured = StructuredOutput("json_schema", s.structured_output.json_schema)
    elif kind == "regex":
        structured = StructuredOutput("regex", s.structured_output.regex)
    elif kind == "choice":
        structured = StructuredOutput("choice", list(s.structured_output.choice.choices))
    return SamplingParams(
        max_tokens=s.max_tokens,
        temperature=s.temperature if s.HasField("temperature") else 1.0,
        top_p=s.top_p if s.HasField("top_p") else 1.0,
        top_k=max(0, s.top_k),
        min_p=s.min_p,
        n=s.n or 1,
        seed=s.seed if s.HasField("seed") else None,
        stop=list(s.stop),
        stop_token_ids=list(s.stop_token_ids),
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        repetition_penalty=s.repetition_penalty if s.HasField("repetition_penalty") else 1.0,
        logit_bias={int(k): float(v) for k, v in s.logit_bias.items()},
        logprobs=s.logprobs if s.HasField("logprobs") and s.logprobs >= 0 else None,
        prompt_logprobs=s.prompt_logprobs if s.HasField("prompt_logprobs") and s.prompt_logprobs >= 0 else None,
        ignore_eos=s.ignore_eos,
        min_tokens=s.min_tokens,
        structured=structured,
        skip_special_tokens=s.skip_special_tokens if s.HasField("skip_special_tokens") else True,
    )


def chat_from_proto(c: pb.ChatPrompt) -> ChatPrompt:
    """Proto chat prompt -> :class:`ChatPrompt`; InvalidArgument naming the field for malformed JSON fields."""
    messages = []
    for i, m in enumerate(c.messages):
        calls = parse_json_list(m.tool_calls_json, f"chat.messages[{i}].tool_calls_json")
        messages.append(ChatMessage(role=m.role, content=m.content, name=m.name, tool_call_id=m.tool_call_id,
                                    tool_calls=calls))
    return ChatPrompt(
        messages=messages,
        add_generation_prompt=c.add_generation_prompt if c.HasField("add_generation_prompt") else True,
        tools=parse_json_list(c.tools_json, "chat.tools_json"),
        chat_template_kwargs=parse_json_object(c.chat_template_kwargs_json, "chat.chat_template_kwargs_json"),
    )


def request_from_proto(r: pb.GenerateRequest, request_id: str, trace_context: Any = None) -> GenerationRequest:
    """Proto GenerateRequest -> :class:`GenerationRequest` with the worker's ``request_id``; InvalidArgument for a request without a prompt."""
    which = r.WhichOneof("prompt")
    if which == "text":
        prompt: Any = r.text
    elif which == "token_ids":
        prompt = list(r.token_ids.ids)
    elif which == "chat":
        prompt = chat_from_proto(r.chat)
    else:
        raise InvalidArgument("a prompt is required: text, token_ids or chat", field_violations=[("prompt", "missing")])
    if not r.model:
        raise InvalidArgument("model is required", field_violations=[("model", "missing")])
    return GenerationRequest(request_id=request_id, model=r.model, prompt=prompt, sampling=sampling_from_proto(r.sampling),
                             echo=r.echo, trace_context=trace_context)


# ------------------------------------------------------------------------------ domain -> proto
def logprob_to_proto(lp: TokenLogprob) -> pb.TokenLogprob:
    """An engine :class:`TokenLogprob` -> its proto message (``logprob`` unset when None)."""
    m = pb.TokenLogprob(token_id=lp.token_id, token=lp.token,
                        top_logprobs=[pb.TopLogprob(token_id=t.token_id, token=t.token, logprob=t.logprob)
                                      for t in lp.top_logprobs])
    if lp.logprob is not None:
        m.logprob = lp.logprob
    return m


def served_model_to_proto(m: ServedModelInfo) -> pb.ServedModel:
    """An engine :class:`ServedModelInfo` -> the ``ServedModel`` message."""
    return pb.ServedModel(id=m.id, parent=m.parent, hub_model=m.hub_model, max_model_len=m.max_model_len,
                          has_chat_template=m.has_chat_template, created=m.created)


def _set_prompt(msg: pb.GenerateResponse, out: RequestOutput, echo: bool) -> None:
    if echo or out.prompt_logprobs:
        msg.prompt_token_ids.extend(out.prompt_token_ids or [])
    if echo:
        msg.prompt_text = out.prompt_text or ""
    if out.prompt_logprobs:
        msg.prompt_logprobs.extend(logprob_to_proto(x) for x in out.prompt_logprobs)


class _Choice:
    __slots__ = ("finish_reason", "logprobs", "stop_reason", "text", "token_ids")

    def __init__(self) -> None:
        self.token_ids: list[int] = []
        self.text: list[str] = []
        self.logprobs: list[TokenLogprob] = []
        self.finish_reason = ""
        self.stop_reason = ""


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """The engine worker's gRPC surface. ``runtime`` owns the engine and the model source."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime

    @property
    def engine(self) -> Engine:
        return self.runtime.engine

    async def Generate(self, request: pb.GenerateRequest, context) -> AsyncIterator[pb.GenerateResponse]:
        caller_id = request.request_id
        internal_id = f"{caller_id or 'gen'}-{uuid.uuid4().hex[:12]}"
        parent = otel_context.get_current()
        is_chat = request.WhichOneof("prompt") == "chat"
        span = _tracer.start_span(
            f"{'chat' if is_chat else 'text_completion'} {request.model}", context=parent,
            kind=trace.SpanKind.INTERNAL,
            attributes={tm.OPERATION: "chat" if is_chat else "text_completion", tm.REQUEST_MODEL: request.model,
                        tm.SYSTEM: "swiftmesh", tm.PROVIDER: "swiftmesh", "swiftmesh.request_id": caller_id,
                        "swiftmesh.engine": self.engine.kind, "swiftmesh.stream": request.stream})
        outputs = None
        prompt_tokens = completion_tokens = 0
        reasons: dict[int, str] = {}
        try:
            greq = request_from_proto(request, internal_id, trace.set_span_in_context(span, parent))
            outputs = self.engine.generate(greq)
            if request.stream:
                first = True
                async for out in outputs:
                    msg = pb.GenerateResponse(request_id=caller_id)
                    if first:
                        _set_prompt(msg, out, request.echo)
                        first = False
                    for d in out.outputs:
                        completion_tokens += len(d.token_ids)
                        if d.finish_reason:
                            reasons[d.index] = d.finish_reason
                        msg.outputs.append(pb.CompletionOutput(
                            index=d.index, token_ids=d.token_ids, text=d.text,
                            logprobs=[logprob_to_proto(x) for x in d.logprobs or []],
                            finish_reason=d.finish_reason or "", stop_reason=d.stop_reason or ""))
                    if out.usage is not None:
                        prompt_tokens = out.usage.prompt_tokens
                        msg.usage.prompt_tokens = out.usage.prompt_tokens
                        msg.usage.completion_tokens = out.usage.completion_tokens
                    yield msg
            else:
                choices: dict[int, _Choice] = {}
                first_out: RequestOutput | None = None
                prompt_sent = False
                async for out in outputs:
                    if first_out is None:
                        first_out = out
                    ready = []
                    for d in out.outputs:
                        c = choices.setdefault(d.index, _Choice())
                        c.token_ids += d.token_ids
                        c.text.append(d.text)
                        c.logprobs += d.logprobs or []
                        completion_tokens += len(d.token_ids)
                        if d.finish_reason:
                            c.finish_reason, c.stop_reason = d.finish_reason, d.stop_reason
                            reasons[d.index] = d.finish_reason
                            ready.append(d.index)
                    msgs = []
                    for i in ready:
                        c = choices[i]
                        msg = pb.GenerateResponse(request_id=caller_id)
                        msg.outputs.append(pb.CompletionOutput(
                            index=i, token_ids=c.token_ids, text="".join(c.text),
                            logprobs=[logprob_to_proto(x) for x in c.logprobs],
                            finish_reason=c.finish_reason, stop_reason=c.stop_reason))
                        msgs.append(msg)
                    if out.finished and not msgs:
                        msgs.append(pb.GenerateResponse(request_id=caller_id))
                    if msgs and not prompt_sent:
                        _set_prompt(msgs[0], first_out, request.echo)
                        prompt_sent = True
                    if out.usage is not None:
                        prompt_tokens = out.usage.prompt_tokens
                        msgs[-1].usage.prompt_tokens = out.usage.prompt_tokens
                        msgs[-1].usage.completion_tokens = out.usage.completion_tokens
                    for msg in msgs:
                        yield msg
        except BaseException as e:
            if not isinstance(e, (GeneratorExit,)) and not _is_cancel(e):
                span.record_exception(e)
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(e)))
            raise
        finally:
            if outputs is not None:
                await outputs.aclose()  # aborts the engine request unless it finished
            span.set_attribute(tm.INPUT_TOKENS, prompt_tokens)
            span.set_attribute(tm.OUTPUT_TOKENS, completion_tokens)
            span.set_attribute(tm.FINISH_REASONS, [reasons[k] for k in sorted(reasons)])
            span.end()

    async def Tokenize(self, request: pb.TokenizeRequest, context) -> pb.TokenizeResponse:
        which = request.WhichOneof("input")
        if which == "chat":
            prompt: Any = chat_from_proto(request.chat)
        elif which == "text":
            prompt = request.text
        else:
            raise InvalidArgument("text or chat is required", field_violations=[("input", "missing")])
        add = request.add_special_tokens if request.HasField("add_special_tokens") else True
        res = self.engine.tokenize(request.model, prompt, add)
        return pb.TokenizeResponse(token_ids=res.token_ids, max_model_len=res.max_model_len,
                                   prompt_text=res.prompt_text)

    async def Detokenize(self, request: pb.DetokenizeRequest, context) -> pb.DetokenizeResponse:
        return pb.DetokenizeResponse(text=self.engine.detokenize(request.model, list(request.token_ids)))

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[served_model_to_proto(m) for m in self.engine.list_models()])

    async def LoadModel(self, request: pb.LoadModelRequest, context) -> pb.ServedModel:
        if not request.hub_model:
            raise InvalidArgument("hub_model is required", field_violations=[("hub_model", "missing")])
        info = await self.runtime.load_model(request.hub_model, request.served_name,
                                             max_model_len=request.max_model_len, dtype=request.dtype)
        return served_model_to_proto(info)

    async def UnloadModel(self, request: pb.UnloadModelRequest, context) -> empty_pb2.Empty:
        await self.runtime.unload_model(request.served_name)
        return empty_pb2.Empty()

    async def LoadAdapter(self, request: pb.LoadAdapterRequest, context) -> pb.ServedModel:
        if not request.hub_model:
            raise InvalidArgument("hub_model is required", field_violations=[("hub_model", "missing")])
        info = await self.runtime.load_adapter(request.hub_model, request.served_name, base=request.base)
        return served_model_to_proto(info)

    async def UnloadAdapter(self, request: pb.UnloadAdapterRequest, context) -> empty_pb2.Empty:
        await self.runtime.unload_adapter(request.served_name)
        return empty_pb2.Empty()

    async def GetWorkerStatus(self, request: pb.GetWorkerStatusRequest, context) -> pb.WorkerStatus:
        st = self.engine.status()
        return pb.WorkerStatus(engine=st.engine, running=st.running, waiting=st.waiting,
                               kv_cache_usage=st.kv_cache_usage,
                               models=[served_model_to_proto(m) for m in st.models],
                               ready=st.ready and self.runtime.accepting, device=st.device)


def _is_cancel(e: BaseException) -> bool:
    return isinstance(e, asyncio.CancelledError)


__all__ = ["InferenceServicer", "request_from_proto", "sampling_from_proto"]
