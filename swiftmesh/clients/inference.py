"""Domain types of an engine worker's ``InferenceService`` (``inference.proto``), as the
gateway's router and REST handlers see a worker: plain dataclasses, no gRPC and no protobuf, so
domain code can import them. :class:`swiftmesh.clients.gateway.WorkerClient` converts them to
and from the protobuf messages.

Field names and meanings are inference.proto's (see its comments); where the proto marks a
field ``optional``, None here means "not set" (the worker's default applies).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ServedModel:
    """A base model or adapter a worker serves. ``parent`` is an adapter's base model ("" for a
    base model); ``hub_model`` the hub resource the weights come from; ``created`` unix seconds."""

    id: str
    parent: str = ""
    hub_model: str = ""
    max_model_len: int = 0
    has_chat_template: bool = False
    created: int = 0


@dataclass(slots=True)
class WorkerStatus:
    """A worker's engine, load (requests decoding / waiting, KV-cache fraction in use), served
    models and readiness (false while loading or draining)."""

    engine: str = ""
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    models: list[ServedModel] = field(default_factory=list)
    ready: bool = False
    device: str = ""


@dataclass(slots=True)
class StructuredOutput:
    """Constrained decoding: exactly one of the fields is set."""

    json_object: bool = False
    json_schema: str | None = None
    regex: str | None = None
    choice: list[str] | None = None


@dataclass(slots=True)
class SamplingParams:
    """Sampling parameters (vLLM's names). ``max_tokens`` 0: up to the context length;
    ``logprobs`` / ``prompt_logprobs``: alternatives per position, None for none."""

    max_tokens: int = 0
    temperature: float | None = None
    top_p: float | None = None
    top_k: int = 0
    min_p: float = 0.0
    n: int = 1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    structured_output: StructuredOutput | None = None
    skip_special_tokens: bool | None = None


@dataclass(slots=True)
class ChatMessage:
    """One OpenAI chat message; ``tool_calls`` the OpenAI list (assistant messages)."""

    role: str
    content: str = ""
    name: str = ""
    tool_call_id: str = ""
    tool_calls: list[dict] | None = None


@dataclass(slots=True)
class ChatPrompt:
    """A conversation the worker renders with the model's chat template."""

    messages: list[ChatMessage]
    add_generation_prompt: bool | None = None
    tools: list[dict] | None = None
    chat_template_kwargs: dict | None = None


@dataclass(slots=True)
class GenerateRequest:
    """One generation: the prompt is exactly one of ``text``, ``token_ids`` or ``chat``."""

    request_id: str
    model: str
    sampling: SamplingParams
    text: str | None = None
    token_ids: list[int] | None = None
    chat: ChatPrompt | None = None
    stream: bool = True
    echo: bool = False


@dataclass(slots=True)
class TopLogprob:
    """One alternative at a position."""

    token_id: int
    token: str
    logprob: float


@dataclass(slots=True)
class TokenLogprob:
    """A token's logprob (None where there is none, e.g. the first prompt token) and the top
    alternatives at its position."""

    token_id: int
    token: str
    logprob: float | None
    top_logprobs: list[TopLogprob] = field(default_factory=list)


@dataclass(slots=True)
class CompletionOutput:
    """What one choice (``index``) produced since the previous response; ``finish_reason`` is
    set on its last one."""

    index: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str = ""
    stop_reason: str = ""


@dataclass(slots=True)
class Usage:
    """Token counts of a finished request."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class GenerateResponse:
    """One chunk of a generation stream. The first carries the prompt's token ids (and text and
    logprobs when asked for); the last carries ``usage``."""

    request_id: str = ""
    outputs: list[CompletionOutput] = field(default_factory=list)
    prompt_token_ids: list[int] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    usage: Usage | None = None
    prompt_text: str = ""
