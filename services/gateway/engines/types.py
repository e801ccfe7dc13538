"""Engine-independent request and output types of the inference engines.

Names follow vLLM's ``SamplingParams`` / ``RequestOutput`` and the OpenAI API (see
https://platform.openai.com/docs/api-reference/completions and
https://docs.vllm.ai/en/latest/api/vllm/sampling_params.html). No gRPC and no engine library
in here: the worker servicer translates proto messages to these, every engine consumes them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from swiftmesh.runtime.errors import InvalidArgument

# OpenAI caps top_logprobs at 20; vLLM's default max_logprobs is 20 as well.
MAX_LOGPROBS = 20
# OpenAI: n in [1, 128].
MAX_N = 128

FinishReason = Literal["stop", "length", "abort"]


@dataclass
class StructuredOutput:
    """Constrained decoding: the output must match this.

    ``kind`` is one of ``"json_object"`` (any JSON object, ``value`` unused),
    ``"json_schema"`` (``value`` is the schema as a JSON string), ``"regex"`` (``value`` is a
    regular expression) or ``"choice"`` (``value`` is a list of allowed strings). Same meaning as
    vLLM's ``StructuredOutputsParams`` and OpenAI's ``response_format``.
    """

    kind: Literal["json_object", "json_schema", "regex", "choice"]
    value: str | list[str] | None = None


@dataclass
class SamplingParams:
    """How to sample one request (OpenAI / vLLM semantics).

    Attributes:
        max_tokens: most new tokens per choice; 0 means up to the context length.
        temperature: softmax temperature, in [0, 2]; 0 is greedy (argmax). Default 1.0.
        top_p: nucleus sampling mass, in (0, 1]. Default 1.0 (off).
        top_k: keep the k most likely tokens; 0 or -1 is off.
        min_p: drop tokens whose probability is below ``min_p`` times the top one, in [0, 1].
        n: choices per prompt, in [1, 128].
        seed: makes sampling reproducible: choice ``i`` draws from a generator seeded with
            ``seed + i``, independent of the other requests in the batch.
        stop: strings that end a choice (matched across token boundaries; not included in the
            text). At most 16, none empty.
        stop_token_ids: token ids that end a choice (besides EOS).
        presence_penalty / frequency_penalty: OpenAI penalties over the generated tokens, in [-2, 2].
        repetition_penalty: multiplicative penalty over prompt and generated tokens (> 0; 1 is off),
            as in vLLM and HF ``RepetitionPenaltyLogitsProcessor``.
        logit_bias: token id -> bias added to its logit, in [-100, 100].
        logprobs: return the log-probability of each sampled token with this many top alternatives
            (None: off; 0: only the sampled token; at most 20). Log-probabilities are of the
            model's raw distribution (before temperature, penalties and masks), as vLLM's default.
        prompt_logprobs: the same for each prompt token (None: off).
        ignore_eos: keep generating after EOS.
        min_tokens: EOS, stop tokens and stop strings cannot end a choice before this many tokens.
        structured: constrained decoding (None: off).
        skip_special_tokens: leave special tokens out of the text (default True).
    """

    max_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    n: int = 1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    structured: StructuredOutput | None = None
    skip_special_tokens: bool = True

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5

    def validate(self, vocab_size: int | None = None, prefix: str = "sampling") -> None:
        """Check every field; raises :class:`InvalidArgument` listing each bad one as a field
        violation named ``<prefix>.<field>`` (reason ``INVALID_SAMPLING_PARAMS``)."""
        bad: list[tuple[str, str]] = []

        def check(ok: bool, name: str, msg: str) -> None:
            if not ok:
                bad.append((f"{prefix}.{name}", msg))

        def finite(x: float) -> bool:
            return isinstance(x, (int, float)) and math.isfinite(x)

        check(self.max_tokens >= 0, "max_tokens", f"must be >= 0, got {self.max_tokens}")
        check(finite(self.temperature) and 0 <= self.temperature <= 2, "temperature",
              f"must be in [0, 2], got {self.temperature}")
        check(finite(self.top_p) and 0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        check(self.top_k >= -1, "top_k", f"must be -1, 0 (off) or a positive count, got {self.top_k}")
        check(finite(self.min_p) and 0 <= self.min_p <= 1, "min_p", f"must be in [0, 1], got {self.min_p}")
        check(1 <= self.n <= MAX_N, "n", f"must be in [1, {MAX_N}], got {self.n}")
        if self.seed is not None:
            check(-(2**63) <= self.seed < 2**63, "seed", "must fit in a signed 64-bit integer")
        check(len(self.stop) <= 16, "stop", f"at most 16 stop strings, got {len(self.stop)}")
        for i, s in enumerate(self.stop):
            check(bool(s), f"stop[{i}]", "stop strings must not be empty")
        for name, value in (("presence_penalty", self.presence_penalty),
                            ("frequency_penalty", self.frequency_penalty)):
            check(finite(value) and -2 <= value <= 2, name, f"must be in [-2, 2], got {value}")
        check(finite(self.repetition_penalty) and 0 < self.repetition_penalty <= 10, "repetition_penalty",
              f"must be in (0, 10], got {self.repetition_penalty}")
        for tok, bias in self.logit_bias.items():
            check(finite(bias) and -100 <= bias <= 100, f"logit_bias[{tok}]", f"bias must be in [-100, 100], got {bias}")
            if vocab_size is not None:
                check(0 <= tok < vocab_size, f"logit_bias[{tok}]", f"token id out of range [0, {vocab_size})")
        if vocab_size is not None:
            for i, tok in enumerate(self.stop_token_ids):
                check(0 <= tok < vocab_size, f"stop_token_ids[{i}]", f"token id {tok} out of range [0, {vocab_size})")
        for name, value in (("logprobs", self.logprobs), ("prompt_logprobs", self.prompt_logprobs)):
            if value is not None:
                check(0 <= value <= MAX_LOGPROBS, name, f"must be in [0, {MAX_LOGPROBS}] (or off), got {value}")
        check(self.min_tokens >= 0, "min_tokens", f"must be >= 0, got {self.min_tokens}")
        if self.max_tokens and self.min_tokens > self.max_tokens:
            check(False, "min_tokens", f"min_tokens ({self.min_tokens}) exceeds max_tokens ({self.max_tokens})")
        if self.structured is not None:
            s = self.structured
            if s.kind == "json_schema":
                try:
                    schema = json.loads(s.value or "")
                    check(isinstance(schema, (dict, bool)), "structured_output.json_schema",
                          "must be a JSON object (a JSON schema)")
                except (TypeError, ValueError) as e:
                    check(False, "structured_output.json_schema", f"not valid JSON: {e}")
            elif s.kind == "regex":
                check(bool(s.value), "structured_output.regex", "must not be empty")
            elif s.kind == "choice":
                check(bool(s.value) and all(isinstance(c, str) and c for c in s.value or []),
                      "structured_output.choice", "must be a non-empty list of non-empty strings")
            elif s.kind != "json_object":
                check(False, "structured_output", f"unknown kind {s.kind!r}")
        if bad:
            raise InvalidArgument(
                "invalid sampling parameters: " + "; ".join(f"{f}: {d}" for f, d in bad),
                field_violations=bad,
                reason="INVALID_SAMPLING_PARAMS",
            )


@dataclass
class ChatMessage:
    """One OpenAI chat message; ``tool_calls`` is the OpenAI list of tool calls (assistant)."""

    role: str
    content: str = ""
    name: str = ""
    tool_call_id: str = ""
    tool_calls: list[dict] | None = None

    def to_template_dict(self) -> dict:
        """The message as a chat template reads it (empty optional fields left out)."""
        d: dict = {"role": self.role, "content": self.content}
        if self.name:
            d["name"] = self.name
        if self.tool_call_id:
            d["tool_call_id"] = self.tool_call_id
        if self.tool_calls:
            d["tool_calls"] = self.tool_calls
        return d


@dataclass
class ChatPrompt:
    """A conversation rendered by the model's chat template (Jinja, as ``apply_chat_template``)."""

    messages: list[ChatMessage]
    add_generation_prompt: bool = True
    tools: list[dict] | None = None
    chat_template_kwargs: dict = field(default_factory=dict)


Prompt = str | list[int] | ChatPrompt


@dataclass
class GenerationRequest:
    """One request to an engine.

    Attributes:
        request_id: unique among the requests in flight on this engine (the worker makes it so).
        model: served name: the base model or an adapter loaded on this engine.
        prompt: text, token ids, or a chat conversation.
        sampling: sampling parameters.
        echo: return the prompt (ids, text, and logprobs when ``prompt_logprobs`` is set) in
            the first output (OpenAI completions ``echo``).
        add_special_tokens: for text prompts, add the tokenizer's special tokens (BOS);
            default True. Chat prompts never add them (the template does).
    """

    request_id: str
    model: str
    prompt: Prompt
    sampling: SamplingParams = field(default_factory=SamplingParams)
    echo: bool = False
    add_special_tokens: bool = True
    # OpenTelemetry context to parent the engine's span on (None: the current context).
    trace_context: Any = None


@dataclass
class TopLogprob:
    token_id: int
    token: str
    logprob: float


@dataclass
class TokenLogprob:
    """Log-probability of the token at one position; ``logprob`` is None for the first prompt token."""

    token_id: int
    token: str
    logprob: float | None
    top_logprobs: list[TopLogprob] = field(default_factory=list)


@dataclass
class CompletionDelta:
    """New output of one choice since the previous :class:`RequestOutput`.

    ``finish_reason`` is "stop" (EOS, a stop token or string, or a finished grammar), "length"
    (max_tokens or the context length) or "abort", once the choice is done. ``stop_reason`` is
    the stop string, or the stop token id as a string, when a stop string or a stop token (not
    EOS) ended it; else "".
    """

    index: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    stop_reason: str = ""


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt + completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass
class RequestOutput:
    """One message of the stream ``Engine.generate`` yields.

    The first message carries ``prompt_token_ids``/``prompt_text`` (always) and ``prompt_logprobs``
    (when asked); the last one has ``finished`` set and ``usage``. ``outputs`` holds a delta for
    each choice that advanced (possibly several per choice index over the stream).
    """

    request_id: str
    outputs: list[CompletionDelta] = field(default_factory=list)
    finished: bool = False
    prompt_token_ids: list[int] | None = None
    prompt_text: str | None = None
    prompt_logprobs: list[TokenLogprob] | None = None
    usage: Usage | None = None


@dataclass
class ServedModelInfo:
    """A base model or adapter an engine serves (``ServedModel`` in inference.proto)."""

    id: str
    parent: str = ""
    hub_model: str = ""
    max_model_len: int = 0
    has_chat_template: bool = False
    created: int = 0
    path: str = ""

    @property
    def is_adapter(self) -> bool:
        """Whether this is an adapter (it has a base model)."""
        return bool(self.parent)


@dataclass
class EngineStatus:
    """Load of an engine: ``running`` requests being decoded, ``waiting`` ones queued for a slot,
    ``kv_cache_usage`` the fraction in [0, 1] of KV-cache memory in use."""

    engine: str
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    device: str = "cpu"
    ready: bool = False
    models: list[ServedModelInfo] = field(default_factory=list)


@dataclass
class TokenizeResult:
    token_ids: list[int]
    max_model_len: int
    prompt_text: str = ""
