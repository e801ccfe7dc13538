"""The transformers engine: Hugging Face models with continuous batching, on CPU or GPU.

Three parts: this module (model loading, adapters, the :class:`~.base.Engine` interface), the
continuous-batching loop (:mod:`.scheduler`: one thread owns the model, admits requests into the
running batch at every step, decodes them together) and the batch KV cache (:mod:`.kv_cache`).

Multi-LoRA: adapters are loaded into one ``peft.PeftModel``; every forward passes
``adapter_names`` (one per row, ``"__base__"`` for the base model) so requests of different
adapters share a batch — PEFT applies each adapter to its sub-batch in every LoRA layer.

Sampling: :mod:`.sampling` (per-request ``torch.Generator`` for seeded requests); constrained
decoding: :mod:`.structured` (xgrammar). ms-swift's transformers backend serves one request at a
time; this one decodes up to ``max_num_seqs`` together.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch

from swiftmesh.runtime.errors import FailedPrecondition, InvalidArgument

from .base import Engine, EngineConfig, PreparedRequest
from .processing import TokenizerBundle
from .scheduler import BASE_ADAPTER, EngineRequest, Scheduler
from .types import RequestOutput

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 matmuls (AVX512-BF16 / AMX) through oneDNN."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """Torch dtype for ``dtype``. "auto": bfloat16 on CUDA (float16 where bfloat16 is missing);
    on CPU bfloat16 where the CPU has native bfloat16 matmuls (as vLLM's CPU backend does), else
    float32. InvalidArgument for an unknown name."""
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    if dtype not in ("auto", "", None):
        raise InvalidArgument(f"dtype must be auto, bfloat16, float16 or float32, got {dtype!r}",
                              field_violations=[("dtype", "unknown dtype")])
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


class TransformersEngine(Engine):
    """Hugging Face ``AutoModelForCausalLM`` with continuous batching and multi-LoRA (PEFT).

    ``config.extra`` may set ``max_num_batched_tokens`` (prompt tokens prefilled in one step,
    default 4096), ``attn_implementation`` (default: :mod:`.attention`'s decode kernel on top of
    transformers' SDPA) and ``torch_threads`` (torch's
    intra-op threads for the process; default: torch's choice). On a CPU shared with other
    busy processes, OpenMP's spinning threads can slow batched matmuls by an order of magnitude:
    run such workers with ``OMP_WAIT_POLICY=PASSIVE`` or fewer ``torch_threads``.
    """

    kind = "transformers"

    def __init__(self, config: EngineConfig | None = None) -> None:
        super().__init__(config)
        self._sched: Scheduler | None = None
        self._grammar: Any = None
        # served adapter name -> PEFT adapter name (PEFT names cannot hold "." and other characters)
        self._peft_names: dict[str, str] = {}
        self._peft_counter = 0

    # ------------------------------------------------------------ models
    def _load_hf(self, path: Path, dtype: str) -> Any:
        from transformers import AutoModelForCausalLM

        from .attention import register

        attn = self.config.extra.get("attn_implementation") or register()
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=resolve_dtype(dtype, self.device),
                                                     attn_implementation=attn)
        model.to(self.device)
        model.eval()
        return model

    async def _load_base(self, path: Path, bundle: TokenizerBundle, dtype: str) -> None:
        threads = self.config.extra.get("torch_threads")
        if threads:
            torch.set_num_threads(int(threads))
        model = await asyncio.to_thread(self._load_hf, path, dtype)
        sched = Scheduler(model, bundle, torch.device(self.device), self.config.max_num_seqs,
                           int(self.config.extra.get("max_num_batched_tokens", 4096)), asyncio.get_running_loop())
        self._grammar = None
        sched.start()
        self._sched = sched

    async def _unload_base(self) -> None:
        self._peft_names.clear()
        sched, self._sched = self._sched, None
        if sched is not None:
            await asyncio.to_thread(sched.stop)
            sched.model = None
        self._grammar = None
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    async def _load_adapter(self, name: str, path: Path) -> None:
        sched = self._require()
        self._peft_counter += 1
        peft_name = f"lora_{self._peft_counter}"

        def load(s: Scheduler) -> None:
            from peft import PeftModel

            if not s.peft:
                s.model = PeftModel.from_pretrained(s.model, str(path), adapter_name=peft_name, is_trainable=False)
                s.peft = True
            else:
                s.model.load_adapter(str(path), adapter_name=peft_name, is_trainable=False)
            s.model.to(s.device)
            s.model.eval()

        try:
            await sched.call(load)
        except (ValueError, KeyError, RuntimeError, OSError) as e:
            raise InvalidArgument(f"adapter {name!r} at {path} cannot be loaded on this base model: {e}",
                                  reason="INCOMPATIBLE_ADAPTER",
                                  field_violations=[("hub_model", str(e))]) from None
        self._peft_names[name] = peft_name

    async def _unload_adapter(self, name: str) -> None:
        sched = self._require()
        peft_name = self._peft_names.pop(name, None)

        def unload(s: Scheduler) -> None:
            if not s.peft or peft_name is None:
                return
            remaining = [a for a in s.model.peft_config if a != peft_name]
            if not remaining:
                s.model = s.model.unload()  # back to the plain base model
                s.peft = False
            else:
                s.model.delete_adapter(peft_name)

        await sched.call(unload)

    def _require(self) -> Scheduler:
        if self._sched is None:
            raise FailedPrecondition("no model is loaded", reason="NO_BASE_MODEL")
        return self._sched

    def _grammar_backend(self) -> Any:
        if self._grammar is None:
            from .structured import GrammarBackend

            b = self.bundle
            self._grammar = GrammarBackend(b.tokenizer, b.vocab_size, b.eos_token_ids)
            self._require().grammar_backend = self._grammar
        return self._grammar

    # ------------------------------------------------------------ requests
    async def _generate(self, req: PreparedRequest) -> AsyncIterator[RequestOutput]:
        sched = self._require()
        if req.sampling.n > sched.max_num_seqs:
            raise InvalidArgument(f"n={req.sampling.n} exceeds this worker's max_num_seqs ({sched.max_num_seqs})",
                                  field_violations=[("sampling.n", f"at most {sched.max_num_seqs}")])
        grammar = None
        if req.sampling.structured is not None:
            backend = await asyncio.to_thread(self._grammar_backend)
            grammar = await asyncio.to_thread(backend.compile, req.sampling.structured)
        q: asyncio.Queue = asyncio.Queue()
        r = EngineRequest(req, q, grammar, adapter=self._peft_names[req.adapter] if req.adapter else BASE_ADAPTER)
        sched.submit(r)
        while True:
            item = await q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finished:
                return

    async def abort(self, request_id: str) -> None:
        """Abort a request in flight (no-op for an unknown id or without a model)."""
        if self._sched is not None:
            self._sched.abort(request_id)

    def _load_status(self) -> tuple[int, int, float]:
        return self._sched.load() if self._sched is not None else (0, 0, 0.0)

__all__ = ["TransformersEngine", "resolve_dtype"]
