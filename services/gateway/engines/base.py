"""The one engine interface every backend implements (transformers, vLLM, LmDeploy).

In the spirit of vLLM's ``AsyncLLM`` and ms-swift's ``infer_async``: a request goes in,
an async stream of :class:`RequestOutput` deltas comes out (token ids, text, logprobs, finish
and stop reason); the stream's consumer going away (``aclose``, task cancellation) aborts the
request in the engine and frees its KV cache.

:class:`Engine` does everything that does not depend on the backend, once:

* the served-model registry (one base model, many LoRA adapters, selected by name),
* prompt preparation: chat template rendering, tokenization, context-length checks,
* parameter validation (``InvalidArgument`` naming each bad field),
* usage counting, the first/last message contract, aborting on cancel,
* Prometheus metrics (TTFT, time per output token, tokens in/out) and an OpenTelemetry span
  with ``gen_ai.*`` attributes per request.

A backend implements the ``_load_base``/``_unload_base``/``_load_adapter``/``_unload_adapter``
hooks, ``_generate`` (a prepared request -> outputs), ``abort`` and ``_load_status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from opentelemetry import trace

from swiftmesh.runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

from . import telemetry as tm
from .processing import TokenizerBundle
from .types import (
    ChatPrompt,
    EngineStatus,
    GenerationRequest,
    Prompt,
    RequestOutput,
    SamplingParams,
    ServedModelInfo,
    TokenizeResult,
    Usage,
)

log = logging.getLogger("swiftmesh.engines")
_tracer = trace.get_tracer("swiftmesh.engines")


@dataclass
class EngineConfig:
    """Settings every engine reads (``WorkerSettings`` in swiftmesh.runtime.config).

    Attributes:
        device: "cpu", "cuda", "cuda:1", or "auto" (CUDA when available).
        dtype: "auto" (transformers: bfloat16 on CUDA, and on CPUs with native bfloat16, else
            float32; vLLM / LmDeploy: their own choice), "bfloat16", "float16", "float32".
        max_model_len: context length cap, tokens (0: the model's).
        max_num_seqs: most sequences decoded together (continuous batching).
        max_loras: most LoRA adapters active in one batch (vLLM, LmDeploy).
        max_lora_rank: largest LoRA rank served (vLLM).
        enforce_eager: vLLM without CUDA graphs / torch.compile (None: True on CPU).
        gpu_memory_utilization: fraction of GPU memory vLLM / LmDeploy may use.
        extra: engine-specific keyword arguments (``AsyncEngineArgs`` fields for vLLM,
            ``PytorchEngineConfig`` fields for LmDeploy, ``max_num_batched_tokens`` for transformers).
    """

    device: str = "auto"
    dtype: str = "auto"
    max_model_len: int = 0
    max_num_seqs: int = 32
    max_loras: int = 4
    max_lora_rank: int = 64
    enforce_eager: bool | None = None
    gpu_memory_utilization: float = 0.9
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, worker: Any) -> EngineConfig:
        """From a ``WorkerSettings`` (fields missing there keep their defaults)."""
        kw = {}
        for name in ("device", "dtype", "max_model_len", "max_num_seqs", "max_loras", "max_lora_rank",
                     "enforce_eager", "gpu_memory_utilization"):
            if hasattr(worker, name):
                kw[name] = getattr(worker, name)
        extra = getattr(worker, "engine_args", None)
        if extra:
            kw["extra"] = dict(extra)
        return cls(**kw)

    def resolved_device(self) -> str:
        if self.device and self.device != "auto":
            return self.device
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"


@dataclass
class PreparedRequest:
    """A validated request with its prompt tokenized (what ``Engine._generate`` receives).

    ``sampling.max_tokens`` is resolved: never 0, and prompt + max_tokens fits the context.
    ``adapter`` is the served name of the LoRA adapter, or None for the base model.
    """

    request_id: str
    model: ServedModelInfo
    adapter: str | None
    prompt_ids: list[int]
    prompt_text: str
    sampling: SamplingParams
    echo: bool
    bundle: TokenizerBundle
    arrival: float = field(default_factory=time.perf_counter)
    # The engine's span of this request (parent of any span the backend makes).
    span: Any = None


def _validate_dir(path: str | Path, what: str, field_name: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise NotFound(f"{what} directory {str(p)!r} does not exist", reason="MODEL_FILES_NOT_FOUND",
                       field_violations=[(field_name, f"{p} is not a directory")])
    return p


class Engine(ABC):
    """Base of every engine: shared model registry, prompt preparation, validation, usage,
    metrics and tracing. Thread-safety: use from one event loop."""

    kind: ClassVar[str] = "engine"

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.device = self.config.resolved_device()
        self._base: ServedModelInfo | None = None
        self._bundle: TokenizerBundle | None = None
        self._adapters: dict[str, ServedModelInfo] = {}
        self._inflight: dict[str, PreparedRequest] = {}
        self._admin = asyncio.Lock()
        self._ready = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start background machinery (no model is loaded here)."""

    async def shutdown(self) -> None:
        """Abort everything in flight, unload the model, stop background machinery."""
        if self._base is not None:
            await self.unload_model(self._base.id)

    @property
    def ready(self) -> bool:
        return self._base is not None and self._ready

    # ------------------------------------------------------------------ backend hooks
    @abstractmethod
    async def _load_base(self, path: Path, bundle: TokenizerBundle, dtype: str) -> None:
        """Load the base model weights (``bundle.max_model_len`` is the context length)."""

    @abstractmethod
    async def _unload_base(self) -> None:
        """Free the base model (every request was aborted before)."""

    @abstractmethod
    async def _load_adapter(self, name: str, path: Path) -> None:
        """Make the PEFT LoRA adapter at ``path`` servable as ``name``."""

    @abstractmethod
    async def _unload_adapter(self, name: str) -> None:
        """Drop adapter ``name`` (its requests were aborted before)."""

    @abstractmethod
    def _generate(self, req: PreparedRequest) -> AsyncIterator[RequestOutput]:
        """Run a prepared request; yield deltas, the last with ``finished`` set."""

    @abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop a request now and free its KV cache (no-op for an unknown or finished id)."""

    @abstractmethod
    def _load_status(self) -> tuple[int, int, float]:
        """(running, waiting, kv_cache_usage) of the backend."""

    # ------------------------------------------------------------------ models
    async def load_model(
        self,
        path: str | Path,
        served_name: str = "",
        *,
        hub_model: str = "",
        max_model_len: int = 0,
        dtype: str = "",
    ) -> ServedModelInfo:
        """Load a base model from a local Hugging Face directory and serve it as ``served_name``
        (default: the directory name). One base model per engine: FailedPrecondition when one is
        loaded already; NotFound when ``path`` is not a directory."""
        p = _validate_dir(path, "model", "hub_model")
        name = served_name or p.name
        async with self._admin:
            if self._base is not None:
                raise FailedPrecondition(
                    f"this worker already serves {self._base.id!r}; unload it first (one base model per worker)",
                    reason="MODEL_ALREADY_LOADED")
            cap = max_model_len or self.config.max_model_len
            bundle = await asyncio.to_thread(TokenizerBundle.from_pretrained, p, cap)
            t0 = time.perf_counter()
            await self._load_base(p, bundle, dtype or self.config.dtype)
            self._bundle = bundle
            self._base = ServedModelInfo(
                id=name, hub_model=hub_model, max_model_len=bundle.max_model_len,
                has_chat_template=bundle.has_chat_template, created=int(time.time()), path=str(p))
            self._ready = True
            log.info("%s: loaded %s from %s in %.1fs (context %d)", self.kind, name, p,
                     time.perf_counter() - t0, bundle.max_model_len)
            return self._base

    async def unload_model(self, served_name: str) -> None:
        """Abort every request, drop every adapter, free the base model. NotFound if not served."""
        async with self._admin:
            if self._base is None or served_name != self._base.id:
                raise NotFound(f"model {served_name!r} is not loaded on this worker", reason="MODEL_NOT_FOUND")
            self._ready = False
            for rid in list(self._inflight):
                await self.abort(rid)
            for name in list(self._adapters):
                await self._unload_adapter(name)
            self._adapters.clear()
            await self._unload_base()
            self._base = None
            self._bundle = None

    async def load_adapter(
        self,
        path: str | Path,
        served_name: str = "",
        *,
        base: str = "",
        hub_model: str = "",
    ) -> ServedModelInfo:
        """Serve the PEFT LoRA adapter at ``path`` as ``served_name`` on top of the base model.

        Raises FailedPrecondition (no base model), NotFound (``base`` is not the served base, or
        no such directory), AlreadyExists (the name is taken), InvalidArgument (not a PEFT LoRA
        adapter directory).
        """
        p = _validate_dir(path, "adapter", "hub_model")
        name = served_name or p.name
        async with self._admin:
            if self._base is None:
                raise FailedPrecondition("load a base model before adapters", reason="NO_BASE_MODEL")
            if base and base != self._base.id:
                raise NotFound(f"base model {base!r} is not served here (this worker serves {self._base.id!r})",
                               reason="MODEL_NOT_FOUND", field_violations=[("base", "not served here")])
            if name == self._base.id or name in self._adapters:
                raise AlreadyExists(f"a model named {name!r} is already served", reason="MODEL_ALREADY_LOADED")
            cfg_file = p / "adapter_config.json"
            if not cfg_file.is_file():
                raise InvalidArgument(f"{p} is not a PEFT adapter (no adapter_config.json)",
                                      reason="NOT_AN_ADAPTER", field_violations=[("hub_model", "no adapter_config.json")])
            try:
                cfg = json.loads(cfg_file.read_text())
            except ValueError as e:
                raise InvalidArgument(f"{cfg_file}: invalid JSON: {e}", reason="NOT_AN_ADAPTER") from None
            if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
                raise InvalidArgument(f"adapter {name!r} is {cfg.get('peft_type')}, only LoRA adapters are served",
                                      reason="UNSUPPORTED_ADAPTER", field_violations=[("hub_model", "not LoRA")])
            await self._load_adapter(name, p)
            info = ServedModelInfo(
                id=name, parent=self._base.id, hub_model=hub_model, max_model_len=self._base.max_model_len,
                has_chat_template=self._base.has_chat_template, created=int(time.time()), path=str(p))
            self._adapters[name] = info
            log.info("%s: loaded adapter %s from %s", self.kind, name, p)
            return info

    async def unload_adapter(self, served_name: str) -> None:
        """Abort the adapter's requests and drop it. NotFound if no such adapter."""
        async with self._admin:
            if served_name not in self._adapters:
                raise NotFound(f"adapter {served_name!r} is not loaded on this worker", reason="MODEL_NOT_FOUND")
            for rid, req in list(self._inflight.items()):
                if req.adapter == served_name:
                    await self.abort(rid)
            await self._unload_adapter(served_name)
            del self._adapters[served_name]

    def list_models(self) -> list[ServedModelInfo]:
        """The base model first, then its adapters."""
        return ([self._base] if self._base else []) + list(self._adapters.values())

    def resolve(self, model: str) -> tuple[ServedModelInfo, str | None]:
        """(served model, adapter name or None). NotFound (reason MODEL_NOT_FOUND) if not served;
        Unavailable-like FailedPrecondition while nothing is loaded."""
        if self._base is not None and model == self._base.id:
            return self._base, None
        if model in self._adapters:
            return self._adapters[model], model
        served = ", ".join(m.id for m in self.list_models()) or "none"
        raise NotFound(f"model {model!r} is not served by this worker (served: {served})",
                       reason="MODEL_NOT_FOUND", field_violations=[("model", "not served here")])

    @property
    def bundle(self) -> TokenizerBundle:
        if self._bundle is None:
            raise FailedPrecondition("no model is loaded", reason="NO_BASE_MODEL")
        return self._bundle

    # ------------------------------------------------------------------ requests
    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Resolve the model, render and tokenize the prompt, validate the sampling parameters and
        resolve ``max_tokens`` against the context length. Raises NotFound / InvalidArgument."""
        info, adapter = self.resolve(request.model)
        bundle = self.bundle
        params = request.sampling
        params.validate(bundle.vocab_size)
        ids, text = bundle.prompt_ids(request.prompt, request.add_special_tokens, request.model)
        limit = bundle.max_model_len
        if len(ids) >= limit:
            raise InvalidArgument(
                f"the prompt is {len(ids)} tokens; this model's context length is {limit} tokens, "
                f"which leaves no room for output",
                reason="CONTEXT_LENGTH_EXCEEDED", field_violations=[("prompt", f"{len(ids)} tokens >= {limit}")])
        room = limit - len(ids)
        if params.max_tokens == 0:
            max_tokens = room
        elif params.max_tokens > room:
            raise InvalidArgument(
                f"this model's context length is {limit} tokens; the request asks for {len(ids) + params.max_tokens} "
                f"({len(ids)} in the prompt, {params.max_tokens} in the completion); lower max_tokens",
                reason="CONTEXT_LENGTH_EXCEEDED",
                field_violations=[("sampling.max_tokens", f"at most {room} for this prompt")])
        else:
            max_tokens = params.max_tokens
        if params.min_tokens > max_tokens:
            raise InvalidArgument(f"min_tokens ({params.min_tokens}) exceeds the room left ({max_tokens})",
                                  field_violations=[("sampling.min_tokens", f"at most {max_tokens}")])
        if request.request_id in self._inflight:
            raise AlreadyExists(f"request {request.request_id!r} is already running", reason="DUPLICATE_REQUEST_ID")
        return PreparedRequest(
            request_id=request.request_id, model=info, adapter=adapter, prompt_ids=ids, prompt_text=text,
            sampling=replace(params, max_tokens=max_tokens), echo=request.echo, bundle=bundle)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        """Run one request; yields :class:`RequestOutput` deltas.

        The first message carries ``prompt_token_ids`` and ``prompt_text`` (and
        ``prompt_logprobs`` when asked); the last has ``finished`` and ``usage``. Closing the
        iterator early (or cancelling the task that consumes it) aborts the request in the engine.
        Raises NotFound (unknown model), InvalidArgument (bad parameters or prompt, a chat prompt
        to a model without a chat template), Unavailable (the engine died).
        """
        if not self.ready:
            from swiftmesh.runtime.errors import Unavailable

            raise Unavailable("the engine is not ready (no model loaded, or loading)", reason="ENGINE_NOT_READY")
        req = self.prepare(request)
        operation = "chat" if isinstance(request.prompt, ChatPrompt) else "text_completion"
        p = req.sampling
        attrs = {
            tm.OPERATION: operation, tm.SYSTEM: "swiftmesh", tm.PROVIDER: "swiftmesh",
            tm.REQUEST_MODEL: request.model, tm.RESPONSE_MODEL: request.model, tm.RESPONSE_ID: req.request_id,
            tm.MAX_TOKENS: p.max_tokens, tm.TEMPERATURE: p.temperature, tm.TOP_P: p.top_p,
            tm.CHOICE_COUNT: p.n, tm.PRESENCE_PENALTY: p.presence_penalty,
            tm.FREQUENCY_PENALTY: p.frequency_penalty, tm.INPUT_TOKENS: len(req.prompt_ids),
            "swiftmesh.engine": self.kind,
        }
        if p.top_k > 0:
            attrs[tm.TOP_K] = p.top_k
        if p.seed is not None:
            attrs[tm.SEED] = p.seed
        if p.stop:
            attrs[tm.STOP_SEQUENCES] = list(p.stop)
        span = _tracer.start_span(f"{self.kind} generate {request.model}", context=request.trace_context,
                                  kind=trace.SpanKind.INTERNAL, attributes=attrs)
        req.span = span
        self._inflight[req.request_id] = req
        completion_tokens = 0
        finish_reasons: dict[int, str] = {}
        first_token_at: float | None = None
        last_token_at = req.arrival
        first = True
        finished = False
        try:
            async with contextlib.aclosing(self._generate(req)) as outputs:
                async for out in outputs:
                    now = time.perf_counter()
                    for d in out.outputs:
                        if d.token_ids:
                            completion_tokens += len(d.token_ids)
                            if first_token_at is None:
                                first_token_at = now
                                tm.TTFT.labels(request.model).observe(now - req.arrival)
                                span.add_event("first_token")
                            last_token_at = now
                        if d.finish_reason:
                            finish_reasons[d.index] = d.finish_reason
                    if first:
                        if out.prompt_token_ids is None:
                            out.prompt_token_ids = list(req.prompt_ids)
                        if out.prompt_text is None:
                            out.prompt_text = req.prompt_text
                        first = False
                    if out.finished:
                        finished = True
                        out.usage = Usage(len(req.prompt_ids), completion_tokens)
                    yield out
                    if finished:
                        break
        except BaseException as e:
            if not isinstance(e, (GeneratorExit, asyncio.CancelledError)):
                span.record_exception(e)
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(e)))
            raise
        finally:
            self._inflight.pop(req.request_id, None)
            if not finished:
                try:
                    await asyncio.shield(self.abort(req.request_id))
                except BaseException:
                    log.debug("abort of %s failed", req.request_id, exc_info=True)
                for i in range(p.n):
                    finish_reasons.setdefault(i, "abort")
            model = request.model
            tm.PROMPT_TOKENS.labels(model).inc(len(req.prompt_ids))
            tm.GENERATION_TOKENS.labels(model).inc(completion_tokens)
            tm.E2E.labels(model).observe(time.perf_counter() - req.arrival)
            decode_tokens = completion_tokens - p.n
            if first_token_at is not None and decode_tokens > 0:
                tm.TPOT.labels(model).observe((last_token_at - first_token_at) / decode_tokens * p.n)
            for reason in finish_reasons.values():
                tm.REQUESTS.labels(model, reason).inc()
            span.set_attribute(tm.OUTPUT_TOKENS, completion_tokens)
            span.set_attribute(tm.FINISH_REASONS, [finish_reasons[k] for k in sorted(finish_reasons)])
            span.end()

    # ------------------------------------------------------------------ tokenizer service
    def tokenize(self, model: str, prompt: Prompt, add_special_tokens: bool = True) -> TokenizeResult:
        """Token ids of a text or chat prompt with the model's tokenizer / template."""
        self.resolve(model)
        ids, text = self.bundle.prompt_ids(prompt, add_special_tokens, model)
        return TokenizeResult(ids, self.bundle.max_model_len, text if isinstance(prompt, ChatPrompt) else "")

    def detokenize(self, model: str, token_ids: list[int]) -> str:
        """Text of token ids (special tokens kept). InvalidArgument for ids outside the vocabulary."""
        self.resolve(model)
        bad = [i for i in token_ids if not 0 <= i < self.bundle.vocab_size]
        if bad:
            raise InvalidArgument(f"token ids out of range [0, {self.bundle.vocab_size}): {bad[:5]}",
                                  field_violations=[("token_ids", "out of range")])
        return self.bundle.decode(token_ids, skip_special_tokens=False)

    # ------------------------------------------------------------------ status
    def status(self) -> EngineStatus:
        running, waiting, kv = self._load_status() if self._base is not None else (0, 0, 0.0)
        return EngineStatus(engine=self.kind, running=running, waiting=waiting, kv_cache_usage=kv,
                            device=self.device, ready=self.ready, models=self.list_models())

    @property
    def num_inflight(self) -> int:
        return len(self._inflight)
