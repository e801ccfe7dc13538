"""Pydantic models of the OpenAI REST API as the gateway serves it (the protocol layer).

Field names, defaults and limits follow the OpenAI API reference
(https://platform.openai.com/docs/api-reference/chat/create and
https://platform.openai.com/docs/api-reference/completions/create); the extras that
OpenAI-compatible servers accept (``top_k``, ``min_p``, ``repetition_penalty``, ``ignore_eos``,
``min_tokens``, ``stop_token_ids``, ``skip_special_tokens``, ``add_generation_prompt``,
``chat_template_kwargs``) are named as in vLLM's ``vllm/entrypoints/openai`` protocol.

These models know nothing about workers or engines: the functions in
:mod:`swiftmesh.services.gateway.api.translate` turn them into engine requests.
Request models ignore unknown fields (as OpenAI-compatible servers do). Violations of the
limits below become HTTP 400 errors naming the parameter (``error.param``).

Slightly over 500 lines on purpose: it is the whole OpenAI schema the gateway serves, requests
and responses side by side (as vLLM keeps its ``protocol.py``), and the OpenAPI document is
generated from it; splitting it would separate a request from the response it documents.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from swiftmesh.runtime.errors import InvalidArgument

from ..messages import check_message

#: Most alternatives per position in ``top_logprobs`` (chat) and ``logprobs`` (completions).
MAX_TOP_LOGPROBS = 20
#: Most choices per prompt (``n``), as in the OpenAI API.
MAX_N = 128
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]


class ParamError(ValueError):
    """A request field is invalid; ``param`` names it as OpenAI does (``"messages[0].content"``).

    Raised from validators (pydantic wraps it in its ValidationError; the error handler reads
    ``param`` back) and from the handlers.
    """

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class OpenAIBaseModel(BaseModel):
    """Base of the request models: unknown fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, allow_inf_nan=False)


# ----------------------------------------------------------------------------------- errors
class ErrorInfo(BaseModel):
    """The body of an OpenAI error: ``message`` for people, ``type`` and ``code`` for programs,
    ``param`` the request field at fault (or null)."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope ``{"error": {...}}``, for every non-2xx answer of the gateway."""

    error: ErrorInfo


# ----------------------------------------------------------------------------------- models
class ModelCard(BaseModel):
    """A served model (``GET /v1/models``). Adapters name their base model in ``parent``
    (as vLLM does); ``root`` is the hub model the weights come from."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "swiftmesh"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)


# --------------------------------------------------------------------------- shared request
class StreamOptions(OpenAIBaseModel):
    """``stream_options``: only with ``stream: true``. ``include_usage`` adds a last chunk with
    empty ``choices`` and the request's ``usage`` (every other chunk has ``usage: null``)."""

    include_usage: bool | None = False


class JsonSchemaFormat(OpenAIBaseModel):
    """``response_format.json_schema``: the schema the output must match."""

    name: str = Field(default="response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIBaseModel):
    """``response_format``: ``text`` (default), ``json_object`` (any JSON object) or
    ``json_schema`` (JSON matching ``json_schema.schema``), enforced by constrained decoding."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ParamError(
                "response_format.json_schema is required when response_format.type is 'json_schema'",
                "response_format.json_schema",
            )
        return self


class SamplingFields(OpenAIBaseModel):
    """Parameters shared by chat and text completions.

    OpenAI: ``frequency_penalty``/``presence_penalty`` in [-2, 2] (default 0), ``logit_bias``
    (token id -> bias in [-100, 100]), ``n`` in [1, 128] (default 1), ``seed`` (int64),
    ``stop`` (a string or a list of strings, matched across token boundaries, not included in
    the output), ``stream``, ``stream_options``, ``temperature`` in [0, 2] (default 1; 0 is
    greedy; below 1e-5 counts as 0), ``top_p`` in (0, 1] (default 1), ``user`` (ignored).
    Extras: ``top_k`` (-1 or 0: off), ``min_p`` in [0, 1], ``repetition_penalty`` in [0.01, 2]
    (1: off), ``ignore_eos``, ``min_tokens`` (no stop before this many tokens),
    ``stop_token_ids``, ``skip_special_tokens`` (default true).
    """

    frequency_penalty: float | None = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    n: int | None = Field(default=1, ge=1, le=MAX_N)
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    user: str | None = None
    # Extras (vLLM names).
    top_k: int | None = Field(default=None, ge=-1, le=INT32_MAX)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, ge=0.01, le=2.0)
    ignore_eos: bool | None = False
    min_tokens: int | None = Field(default=0, ge=0, le=INT32_MAX)
    stop_token_ids: list[TokenId] | None = None
    skip_special_tokens: bool | None = True

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        for key, bias in v.items():
            try:
                token = int(key)
            except ValueError:
                raise ParamError(f"logit_bias keys must be token ids (integers as strings); got {key!r}") from None
            if not 0 <= token <= INT32_MAX:
                raise ParamError(f"logit_bias keys must be token ids in [0, {INT32_MAX}]; got {key!r}")
            if not -100.0 <= bias <= 100.0:
                raise ParamError(f"logit_bias values must be in [-100, 100]; got {bias} for token {key}")
        return v

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and any(s == "" for s in v):
            raise ParamError("stop strings must not be empty")
        return v

    @model_validator(mode="after")
    def _check_stream_options(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ParamError("stream_options is only allowed when stream is true", "stream_options")
        return self

    def stop_list(self) -> list[str]:
        """``stop`` as a list (a single string becomes one item; none: empty)."""
        if self.stop is None or self.stop == "":
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        """Whether the stream ends with a usage chunk (``stream_options.include_usage``)."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


# ------------------------------------------------------------------------------------ chat
class ChatMessageParam(OpenAIBaseModel):
    """One message of ``messages``. ``content`` is a string or a list of ``{"type": "text",
    "text": ...}`` parts (other part types are not supported: 400). Assistant messages may carry
    ``tool_calls`` and tool messages ``tool_call_id``; both go to the chat template. The
    conversation is checked by the gateway's one message validator (:mod:`..messages`)."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, v: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        if isinstance(v, list):
            for i, part in enumerate(v):
                kind = part.get("type")
                if kind not in ("text", "input_text"):
                    raise ParamError(f"content part {i}: only text parts are supported, got type {kind!r}")
                if not isinstance(part.get("text"), str):
                    raise ParamError(f"content part {i}: a text part needs a string 'text'")
        return v

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part["text"] for part in self.content)


class FunctionDefinition(OpenAIBaseModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(OpenAIBaseModel):
    """A tool the model may call (``tools``); passed to the chat template."""

    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(OpenAIBaseModel):
    name: str


class NamedToolChoice(OpenAIBaseModel):
    """``tool_choice: {"type": "function", "function": {"name": ...}}``: the model must call that
    function; its arguments are generated by constrained decoding against its JSON schema."""

    type: Literal["function"] = "function"
    function: NamedFunction


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``.

    ``max_completion_tokens`` (or the older ``max_tokens``) caps the generated tokens (default:
    up to the context length). ``logprobs: true`` returns the log-probabilities of the output
    tokens, with ``top_logprobs`` in [0, 20] alternatives each. ``tool_choice``: ``none``, a
    named function, or ``required``; ``auto`` (free-form tool calls) is not supported (400).
    """

    messages: list[ChatMessageParam] = Field(min_length=1)
    model: str
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    response_format: ResponseFormat | None = None
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Extras.
    add_generation_prompt: bool | None = True
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ParamError("top_logprobs requires logprobs to be true", "top_logprobs")
        for i, m in enumerate(self.messages):
            try:
                check_message(i, m.role, tool_calls=m.tool_calls, tool_call_id=m.tool_call_id)
            except InvalidArgument as e:
                raise ParamError(e.message, e.field_violations[0].field) from None
        choice = self.tool_choice
        if choice is not None and choice != "none":
            if not self.tools:
                raise ParamError("tool_choice requires tools", "tool_choice")
            if choice == "auto":
                raise ParamError(
                    "tool_choice 'auto' is not supported by this server: use 'none', 'required' "
                    "or a named function",
                    "tool_choice",
                )
            if isinstance(choice, NamedToolChoice):
                names = [t.function.name for t in self.tools]
                if choice.function.name not in names:
                    raise ParamError(
                        f"tool_choice names function {choice.function.name!r}, which is not among "
                        f"tools ({', '.join(names)})",
                        "tool_choice.function.name",
                    )
            if self.response_format is not None and self.response_format.type != "text":
                raise ParamError("response_format cannot be combined with a forced tool_choice", "response_format")
        return self

    @property
    def output_limit(self) -> int | None:
        """The cap on generated tokens: ``max_completion_tokens``, else ``max_tokens`` (None: the context length)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# ----------------------------------------------------------------------------- completions
Prompt = str | list[str] | list[TokenId] | list[list[TokenId]]


class CompletionRequest(SamplingFields):
    """``POST /v1/completions`` (legacy text completions).

    ``prompt``: a string, a list of strings, a list of token ids, or a list of token-id lists
    (one set of choices per prompt). ``max_tokens`` defaults to 16 as in the OpenAI API; 0 is
    allowed with ``echo`` (score the prompt only). ``logprobs`` in [0, 20] returns that many
    alternatives per token; with ``echo`` the prompt tokens and their log-probabilities come
    first (the log-likelihood path of evaluation harnesses). ``best_of`` other than ``n`` and
    ``suffix`` are not supported (400).
    """

    model: str
    prompt: Prompt
    best_of: int | None = Field(default=None, ge=1, le=MAX_N)
    echo: bool | None = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    max_tokens: int | None = Field(default=16, ge=0, le=INT32_MAX)
    suffix: str | None = None
    response_format: ResponseFormat | None = None

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, v: Prompt) -> Prompt:
        if isinstance(v, list):
            if not v:
                raise ParamError("prompt must not be an empty list")
            if all(isinstance(p, list) for p in v) and any(not p for p in v):
                raise ParamError("a token-id prompt must not be empty")
        return v

    @model_validator(mode="after")
    def _check(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise ParamError("best_of other than n is not supported", "best_of")
        if self.suffix:
            raise ParamError("suffix is not supported", "suffix")
        if self.max_tokens == 0 and not self.echo:
            raise ParamError("max_tokens must be at least 1 (0 is allowed only with echo)", "max_tokens")
        if self.max_tokens == 0 and self.stream:
            raise ParamError("max_tokens 0 (prompt scoring) is not supported with stream", "max_tokens")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The prompts as a list: each a string or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- responses
class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter", "abort"] | None = None


class ChatCompletionResponse(BaseModel):
    """The answer of a non-streamed chat completion (object ``chat.completion``)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None
    service_tier: str | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion (object ``chat.completion.chunk``);
    the stream ends with ``data: [DONE]``."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


class CompletionLogprobs(BaseModel):
    """Legacy completions logprobs: parallel lists over the tokens (prompt tokens first with
    ``echo``; the first prompt token has ``null`` log-probability and alternatives)."""

    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length", "abort"] | None = None


class CompletionResponse(BaseModel):
    """The answer of a text completion (object ``text_completion``); when streamed, each event
    has this shape with ``finish_reason`` null until a choice ends."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


# ----------------------------------------------------------------------------------- admin
class LoadAdapterBody(BaseModel):
    """``POST /v1/admin/adapters``: load a PEFT adapter from the hub on the workers serving its
    base model. ``adapter`` is the hub model ("models/{model}" or "{model}") or a directory on
    the workers' hosts; ``served_name`` defaults to the adapter's model id (or directory name);
    ``base`` (served name of the base model) is needed only when the workers serve several base
    models; ``workers`` (addresses) limits the load to those workers."""

    model_config = ConfigDict(extra="forbid")

    adapter: str = Field(min_length=1)
    served_name: str | None = None
    base: str | None = None
    workers: list[str] | None = None


class AdapterLoadResult(BaseModel):
    model: ModelCard
    workers: list[str]
