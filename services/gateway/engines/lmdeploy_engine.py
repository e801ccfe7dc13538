"""The LmDeploy engine: LmDeploy's PyTorch engine (continuous batching, paged KV cache, S-LoRA)
behind the common interface. Needs a CUDA GPU: the import is guarded, and a worker without
LmDeploy or without a GPU fails to load a model with a clear error.

LmDeploy is used at the token level (``EngineInstance.async_stream_infer`` yields new token ids);
everything else is the shared code of the other engines: prompt rendering and tokenization
(:class:`~.processing.TokenizerBundle`), incremental detokenization and stop strings across
token boundaries (:class:`~.processing.SequenceProcessor`; a stop string cancels the LmDeploy
session at once), validation, usage, metrics and tracing (:class:`~.base.Engine`). ``n`` > 1 runs
one session per choice. Constrained decoding uses LmDeploy's ``response_format`` (xgrammar in
the PyTorch engine); ``logit_bias`` a logits processor. Presence / frequency penalties and prompt
logprobs have no LmDeploy counterpart and are refused (InvalidArgument naming the parameter).

API used (lmdeploy >= 0.10): ``lmdeploy.PytorchEngineConfig``, ``lmdeploy.GenerationConfig``,
``lmdeploy.pytorch.engine.Engine.from_pretrained``, ``Engine.create_instance``,
``EngineInstance.async_stream_infer / async_cancel / async_end``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from swiftmesh.runtime.errors import FailedPrecondition, Internal, InvalidArgument, Unavailable

from .base import Engine, EngineConfig, PreparedRequest
from .processing import SequenceProcessor, TokenizerBundle
from .types import RequestOutput, SamplingParams

log = logging.getLogger("swiftmesh.engines.lmdeploy")

_session_ids = itertools.count(1)


def lmdeploy_available() -> tuple[bool, str]:
    """(usable, reason): LmDeploy is importable and a CUDA device is present."""
    try:
        import lmdeploy  # noqa: F401
    except ImportError:
        return False, "lmdeploy is not installed (pip install 'swiftmesh[lmdeploy]'; it needs CUDA)"
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "lmdeploy needs a CUDA GPU and none is present"
    except ImportError:  # pragma: no cover
        return False, "torch is not installed"
    return True, ""


def check_supported(p: SamplingParams) -> None:
    """InvalidArgument for parameters LmDeploy cannot honour, naming each."""
    bad = []
    if p.presence_penalty:
        bad.append(("sampling.presence_penalty", "not supported by the lmdeploy engine"))
    if p.frequency_penalty:
        bad.append(("sampling.frequency_penalty", "not supported by the lmdeploy engine"))
    if p.prompt_logprobs is not None:
        bad.append(("sampling.prompt_logprobs", "not supported by the lmdeploy engine"))
    if bad:
        raise InvalidArgument("unsupported parameters for the lmdeploy engine: " + ", ".join(f for f, _ in bad),
                              field_violations=bad, reason="UNSUPPORTED_PARAMETER")


def _logit_bias_processor(bias: dict[int, float]) -> Any:
    def process(input_ids: Any, scores: Any) -> Any:
        for tok, b in bias.items():
            scores[..., tok] += b
        return scores

    return process


def to_generation_config(p: SamplingParams, bundle: TokenizerBundle, choice: int) -> Any:
    """An ``lmdeploy.GenerationConfig`` for one choice of a request (seed + choice index)."""
    from lmdeploy import GenerationConfig

    response_format = None
    if p.structured is not None:
        s = p.structured
        if s.kind == "json_object":
            response_format = {"type": "json_schema", "json_schema": {"name": "object", "schema": {"type": "object"}}}
        elif s.kind == "json_schema":
            response_format = {"type": "json_schema", "json_schema": {"name": "schema", "schema": json.loads(s.value)}}
        elif s.kind == "regex":
            response_format = {"type": "regex_schema", "regex_schema": s.value}
        elif s.kind == "choice":
            import re

            response_format = {"type": "regex_schema", "regex_schema": "|".join(re.escape(c) for c in s.value)}
    stop_ids = list(p.stop_token_ids) + ([] if p.ignore_eos else list(bundle.eos_token_ids))
    return GenerationConfig(
        n=1,
        max_new_tokens=p.max_tokens,
        do_sample=not p.greedy,
        top_p=p.top_p,
        top_k=max(0, p.top_k),
        min_p=p.min_p,
        temperature=p.temperature if not p.greedy else 1.0,
        repetition_penalty=p.repetition_penalty,
        ignore_eos=p.ignore_eos,
        random_seed=(p.seed + choice) % (2**63) if p.seed is not None else None,
        stop_token_ids=stop_ids or None,
        min_new_tokens=p.min_tokens or None,
        skip_special_tokens=p.skip_special_tokens,
        logprobs=p.logprobs if p.logprobs else None,
        response_format=response_format,
        logits_processors=[_logit_bias_processor(p.logit_bias)] if p.logit_bias else None,
    )


class LmDeployEngine(Engine):
    """LmDeploy PyTorch engine. ``config.extra`` holds further ``PytorchEngineConfig`` fields.

    LmDeploy takes LoRA adapters when the engine is built, so loading or unloading an adapter
    rebuilds the engine; that is refused (FailedPrecondition) while requests are in flight.
    """

    kind = "lmdeploy"

    def __init__(self, config: EngineConfig | None = None) -> None:
        super().__init__(config)
        self._pt: Any = None
        self._path: Path | None = None
        self._dtype = "auto"
        self._adapter_paths: dict[str, str] = {}
        self._sessions: dict[str, list[tuple[Any, int]]] = {}

    def _build(self, bundle: TokenizerBundle) -> Any:
        from lmdeploy import PytorchEngineConfig
        from lmdeploy.pytorch.engine import Engine as PtEngine

        kw: dict[str, Any] = {
            "dtype": self._dtype if self._dtype in ("auto", "float16", "bfloat16") else "auto",
            "session_len": bundle.max_model_len,
            "max_batch_size": self.config.max_num_seqs,
            "cache_max_entry_count": min(max(self.config.gpu_memory_utilization, 0.05), 0.95),
            "adapters": dict(self._adapter_paths) or None,
        }
        kw.update(self.config.extra)
        return PtEngine.from_pretrained(str(self._path), engine_config=PytorchEngineConfig(**kw))

    async def _load_base(self, path: Path, bundle: TokenizerBundle, dtype: str) -> None:
        ok, why = lmdeploy_available()
        if not ok:
            raise FailedPrecondition(f"the lmdeploy engine cannot run here: {why}", reason="ENGINE_UNAVAILABLE")
        self._path, self._dtype = path, dtype or "auto"
        self._pt = await asyncio.to_thread(self._build, bundle)

    async def _close(self) -> None:
        pt, self._pt = self._pt, None
        if pt is not None and hasattr(pt, "close"):
            await asyncio.to_thread(pt.close)

    async def _unload_base(self) -> None:
        await self._close()
        self._adapter_paths.clear()

    async def _rebuild(self) -> None:
        if self._inflight:
            raise FailedPrecondition("lmdeploy loads adapters only when no request is in flight; retry when idle",
                                     reason="ENGINE_BUSY", retry_after=1.0)
        await self._close()
        self._pt = await asyncio.to_thread(self._build, self.bundle)

    async def _load_adapter(self, name: str, path: Path) -> None:
        self._adapter_paths[name] = str(path)
        try:
            await self._rebuild()
        except BaseException:
            self._adapter_paths.pop(name, None)
            raise

    async def _unload_adapter(self, name: str) -> None:
        self._adapter_paths.pop(name, None)
        if self._pt is not None:
            await self._rebuild()

    # ------------------------------------------------------------ requests
    async def _run_choice(self, req: PreparedRequest, choice: int, q: asyncio.Queue) -> None:
        """Stream one choice's tokens through a SequenceProcessor into ``q`` (deltas, then None)."""
        from lmdeploy.messages import ResponseType

        p = req.sampling
        proc = SequenceProcessor(req.bundle, choice, req.prompt_ids, p.max_tokens, p.stop, p.stop_token_ids,
                                 p.ignore_eos, p.min_tokens, p.skip_special_tokens, p.logprobs)
        instance = self._pt.create_instance()
        session = next(_session_ids)
        self._sessions.setdefault(req.request_id, []).append((instance, session))
        gen_config = to_generation_config(p, req.bundle, choice)
        engine_done = False
        try:
            async for out in instance.async_stream_infer(session, req.prompt_ids, gen_config=gen_config,
                                                         adapter_name=req.adapter):
                if out.status not in (ResponseType.SUCCESS, ResponseType.FINISH):
                    raise Internal(f"lmdeploy failed on request {req.request_id}: {out.status}")
                lps = getattr(out, "logprobs", None) or []
                for j, tok in enumerate(out.token_ids):
                    entry = lps[j] if j < len(lps) else None
                    lp, top = None, []
                    if isinstance(entry, dict):
                        lp = entry.get(tok)
                        top = sorted(entry.items(), key=lambda kv: -kv[1])[: p.logprobs or 0]
                    if proc.add_token(tok, lp, top):
                        break
                if out.status == ResponseType.FINISH:
                    engine_done = True
                if not proc.finished and out.status == ResponseType.FINISH:
                    # LmDeploy leaves the stop token out of token_ids.
                    proc.finish("length" if proc.num_tokens >= p.max_tokens else "stop")
                d = proc.take_delta()
                if d is not None:
                    q.put_nowait(d)
                if proc.finished:
                    break
        finally:
            if not proc.finished:
                proc.finish("abort")
                d = proc.take_delta()
                if d is not None:
                    q.put_nowait(d)
            try:
                if not engine_done:  # stopped on our side (stop string, abort): stop the session
                    await instance.async_cancel(session)
                await instance.async_end(session)
            except Exception:
                log.debug("ending lmdeploy session %s failed", session, exc_info=True)
            q.put_nowait(None)

    async def _generate(self, req: PreparedRequest) -> AsyncIterator[RequestOutput]:
        if self._pt is None:
            raise Unavailable("the lmdeploy engine is not running", reason="ENGINE_NOT_READY")
        check_supported(req.sampling)
        q: asyncio.Queue = asyncio.Queue()
        tasks = [asyncio.create_task(self._run_choice(req, i, q)) for i in range(req.sampling.n)]
        live = len(tasks)
        try:
            while live:
                item = await q.get()
                batch = []
                while True:
                    if item is None:
                        live -= 1
                    else:
                        batch.append(item)
                    if q.empty():
                        break
                    item = q.get_nowait()
                if live == 0:
                    for t in tasks:
                        await t  # surface the error of a failed choice
                if batch or live == 0:
                    yield RequestOutput(request_id=req.request_id, outputs=batch, finished=live == 0)
        finally:
            for t in tasks:
                if not t.done():
                    t.cancel()
            self._sessions.pop(req.request_id, None)

    async def abort(self, request_id: str) -> None:
        for instance, session in self._sessions.pop(request_id, []):
            try:
                await instance.async_cancel(session)
            except Exception:
                log.debug("cancel of lmdeploy session %s failed", session, exc_info=True)

    def _load_status(self) -> tuple[int, int, float]:
        running = len(self._inflight)
        kv = 0.0
        metrics = getattr(self._pt, "get_schedule_metrics", None)
        if callable(metrics):
            try:
                m = metrics()
                total = getattr(m, "total_blocks", 0) or 0
                if total:
                    kv = 1.0 - (getattr(m, "free_blocks", total) / total)
                waiting = int(getattr(m, "waiting_seqs", 0) or 0)
                return max(running - waiting, 0), waiting, kv
            except Exception:
                log.debug("lmdeploy schedule metrics failed", exc_info=True)
        return running, 0, kv

