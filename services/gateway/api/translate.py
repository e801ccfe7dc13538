"""Translation between the OpenAI schema (:mod:`.protocol`) and the engine's request and
response (the ``InferenceService`` contract): sampling parameters, structured output and forced
tool calls on the way in; logprobs, tool calls, choices and usage on the way out.

Nothing here does I/O: the handlers (:mod:`.serving`, :mod:`.serving_chat`,
:mod:`.serving_completions`) call these functions and send the results through the router.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from swiftmesh.clients.inference import (
    ChatMessage,
    ChatPrompt,
    GenerateRequest,
    GenerateResponse,
    SamplingParams,
    ServedModel,
    StructuredOutput,
    TokenLogprob,
)

from .errors import APIError
from .protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    NamedToolChoice,
    ParamError,
    ResponseFormat,
    SamplingFields,
)

#: Temperatures below this are greedy (vLLM's _SAMPLING_EPS).
SAMPLING_EPS = 1e-5


# ---------------------------------------------------------------------------- requests
def structured_output(fmt: ResponseFormat | None) -> StructuredOutput | None:
    """The engine's structured-output constraint of ``response_format`` (None for text)."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return StructuredOutput(json_object=True)
    schema = (fmt.json_schema.schema_ if fmt.json_schema else None) or {"type": "object"}
    return StructuredOutput(json_schema=json.dumps(schema))


def sampling_params(req: SamplingFields, max_tokens: int, logprobs: int | None,
                    prompt_logprobs: int | None = None) -> SamplingParams:
    """The engine's sampling parameters of a request. ``max_tokens`` 0 is the model's context
    limit; ``logprobs``/``prompt_logprobs`` None for none, else the alternatives per position."""
    temperature = req.temperature
    if temperature is not None and temperature < SAMPLING_EPS:
        temperature = 0.0  # as vLLM: this small is greedy (dividing logits by it would overflow)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=req.top_p,
        top_k=req.top_k or 0,
        min_p=req.min_p or 0.0,
        n=req.n or 1,
        seed=req.seed,
        stop=req.stop_list(),
        stop_token_ids=list(req.stop_token_ids or []),
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        repetition_penalty=req.repetition_penalty,
        logit_bias={int(k): float(v) for k, v in (req.logit_bias or {}).items()},
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        ignore_eos=bool(req.ignore_eos),
        min_tokens=req.min_tokens or 0,
        skip_special_tokens=req.skip_special_tokens,
    )


def check_limits(req: SamplingFields, info: ServedModel, max_tokens: int, param: str) -> None:
    """ParamError (naming ``param``) when ``max_tokens`` exceeds the model's context length or
    ``min_tokens`` exceeds ``max_tokens``."""
    if info.max_model_len and max_tokens > info.max_model_len:
        raise ParamError(
            f"{param} is {max_tokens}, more than the context length of model {info.id!r} ({info.max_model_len})",
            param, "above_max_value",
        )
    if req.min_tokens and max_tokens and req.min_tokens > max_tokens:
        raise ParamError(f"min_tokens ({req.min_tokens}) must not exceed {param} ({max_tokens})", "min_tokens")


def tool_schema(req: ChatCompletionRequest) -> tuple[str | None, dict | None]:
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


def chat_generate_request(req: ChatCompletionRequest, info: ServedModel, request_id: str) -> GenerateRequest:
    """The GenerateRequest of a chat completion (the worker renders the chat template)."""
    if not info.has_chat_template:
        raise APIError(
            400,
            f"model {info.id!r} has no chat template, so it cannot serve chat completions; "
            "use /v1/completions with a plain prompt",
            param="model", code="model_has_no_chat_template",
        )
    max_tokens = req.output_limit or 0
    check_limits(req, info, max_tokens, "max_completion_tokens" if req.max_completion_tokens else "max_tokens")
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    sampling = sampling_params(req, max_tokens, logprobs)
    _mode, schema = tool_schema(req)
    sampling.structured_output = (StructuredOutput(json_schema=json.dumps(schema)) if schema is not None
                                  else structured_output(req.response_format))
    messages = [ChatMessage(role=m.role, content=m.text(), name=m.name or "", tool_call_id=m.tool_call_id or "",
                            tool_calls=m.tool_calls or None) for m in req.messages]
    chat = ChatPrompt(
        messages=messages,
        add_generation_prompt=req.add_generation_prompt,
        tools=[t.model_dump(exclude_none=True) for t in req.tools]
        if req.tools and req.tool_choice not in (None, "none") else None,
        chat_template_kwargs=req.chat_template_kwargs or None,
    )
    return GenerateRequest(request_id=request_id, model=req.model, chat=chat, sampling=sampling, stream=True)


def completion_generate_requests(
    req: CompletionRequest, info: ServedModel, request_id: str
) -> list[GenerateRequest]:
    """One GenerateRequest per prompt. ``max_tokens`` 0 with ``echo`` asks for one token (dropped
    from the answer): the worker contract has no "prompt only" mode."""
    max_tokens = req.max_tokens if req.max_tokens is not None else 16
    check_limits(req, info, max_tokens, "max_tokens")
    logprobs = req.logprobs
    prompt_logprobs = logprobs if req.echo else None
    sampling = sampling_params(req, max(max_tokens, 1), logprobs, prompt_logprobs)
    sampling.structured_output = structured_output(req.response_format)
    prompts = req.prompts()
    out = []
    for i, p in enumerate(prompts):
        rid = request_id if len(prompts) == 1 else f"{request_id}-{i}"
        out.append(GenerateRequest(request_id=rid, model=req.model, sampling=sampling, stream=True,
                                   echo=bool(req.echo), text=p if isinstance(p, str) else None,
                                   token_ids=None if isinstance(p, str) else list(p)))
    return out


# --------------------------------------------------------------------------- output shapes
def chat_logprobs(items: list[TokenLogprob], k: int) -> list[dict[str, Any]]:
    """Chat ``logprobs.content`` entries of the engine's token logprobs, ``k`` alternatives each
    (a token without a logprob gets -9999.0, as vLLM does)."""
    out = []
    for lp in items:
        out.append({
            "token": lp.token,
            "logprob": lp.logprob if lp.logprob is not None else -9999.0,
            "bytes": list(lp.token.encode("utf-8")),
            "top_logprobs": [
                {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode("utf-8"))}
                for t in lp.top_logprobs[:k]
            ],
        })
    return out


class CompletionLogprobs:
    """Accumulates the parallel lists of legacy completions logprobs."""

    __slots__ = ("k", "offset", "text_offset", "token_logprobs", "tokens", "top_logprobs")

    def __init__(self, k: int, offset: int = 0) -> None:
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []
        self.offset = offset
        self.k = k

    def add(self, items: list[TokenLogprob], first_is_prompt_start: bool = False) -> dict[str, Any]:
        """Add tokens; returns the delta as a logprobs object (for a stream chunk)."""
        delta = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for i, lp in enumerate(items):
            value = lp.logprob
            has = value is not None
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
        """OpenAI's legacy ``logprobs`` object of everything added."""
        return {"text_offset": self.text_offset, "token_logprobs": self.token_logprobs,
                "tokens": self.tokens, "top_logprobs": self.top_logprobs}


@dataclass
class Choice:
    """One choice of a non-streamed request, accumulated from the engine's responses."""

    text: list[str] = field(default_factory=list)
    tokens: int = 0
    logprobs: list = field(default_factory=list)
    finish_reason: str | None = None


class Usage:
    """Token usage of a request: the engine's count when it sent one (``seen``), else counted."""

    __slots__ = ("completion", "prompt", "seen")

    def __init__(self) -> None:
        self.prompt = 0
        self.completion = 0
        self.seen = False

    def take(self, msg: GenerateResponse) -> None:
        """Adopt the usage a response carries, if any."""
        if msg.usage is not None:
            self.prompt = msg.usage.prompt_tokens
            self.completion = msg.usage.completion_tokens
            self.seen = True

    def as_dict(self) -> dict[str, int]:
        """OpenAI's ``usage`` object."""
        return {"prompt_tokens": self.prompt, "completion_tokens": self.completion,
                "total_tokens": self.prompt + self.completion}


def tool_calls(mode: str, req: ChatCompletionRequest, text: str) -> list[dict[str, Any]] | None:
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
