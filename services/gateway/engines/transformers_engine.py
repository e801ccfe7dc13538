"""The transformers engine: Hugging Face models with continuous batching, on CPU or GPU.

A scheduler thread owns the model and runs a loop of steps. Each step:

1. takes new requests, aborts and admin calls from its inbox;
2. admits waiting requests while there are free slots (``max_num_seqs`` sequences) and prefill
   budget (``max_num_batched_tokens`` prompt tokens): their prompts are prefilled together
   (left-padded), their first tokens sampled, and their KV caches merged into the running batch;
3. decodes one token for every running sequence in one forward pass, samples, detokenizes,
   checks stop conditions, streams the deltas, and drops finished sequences from the batch.

So a request arriving while others decode joins at the next step, and a finished one frees its
slot (and KV cache) at once. The batch KV cache is a ``transformers.DynamicCache`` whose
per-layer tensors are ``[batch, kv_heads, T, head_dim]``, left-padded: each sequence has its own
real length and position ids, the 2-D attention mask hides its padding (the causal mask is
index-based and the rotary positions come from ``position_ids``, so mixing lengths is exact).
Padding columns no sequence needs any more are trimmed when sequences leave.

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
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from swiftmesh.runtime.errors import Internal, InvalidArgument, SwiftMeshError

from .base import Engine, EngineConfig, PreparedRequest
from .processing import SequenceProcessor, TokenizerBundle
from .sampling import SequenceSampler, prompt_logprobs, sample
from .types import CompletionDelta, RequestOutput

log = logging.getLogger("swiftmesh.engines.transformers")

BASE_ADAPTER = "__base__"
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


def _make_cache_classes() -> tuple[type, type]:
    from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A KV-cache layer whose ``keys``/``values`` ([B, H, T, D]) are views of buffers with
        spare room along T: a decoding step writes its token in place instead of concatenating
        (copying) the whole cache of the layer."""

        SPARE = 64  # extra positions reserved at each reallocation

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            super().lazy_initialization(key_states, value_states)
            self._kbuf: torch.Tensor | None = None
            self._vbuf: torch.Tensor | None = None

        def _length(self) -> int:
            return 0 if self._kbuf is None else self.keys.shape[-2]

        def assign(self, keys: torch.Tensor, values: torch.Tensor, spare: int | None = None) -> None:
            """Replace the contents with ``keys``/``values`` (copied into new buffers)."""
            if not self.is_initialized:
                self.lazy_initialization(keys, values)
            n = keys.shape[-2]
            cap = n + (self.SPARE if spare is None else spare)
            shape = (keys.shape[0], keys.shape[1], cap, keys.shape[3])
            self._kbuf = keys.new_empty(shape)
            self._vbuf = values.new_empty((values.shape[0], values.shape[1], cap, values.shape[3]))
            self._kbuf[:, :, :n].copy_(keys)
            self._vbuf[:, :, :n].copy_(values)
            self.keys, self.values = self._kbuf[:, :, :n], self._vbuf[:, :, :n]

        def select(self, rows: torch.Tensor, start: int) -> None:
            """Keep batch ``rows`` and drop the first ``start`` positions (one copy, spare room kept)."""
            n = self._length()
            self._kbuf = self._kbuf.index_select(0, rows)[:, :, start:]
            self._vbuf = self._vbuf.index_select(0, rows)[:, :, start:]
            self.keys, self.values = self._kbuf[:, :, : n - start], self._vbuf[:, :, : n - start]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n, m = self._length(), key_states.shape[-2]
            if self._kbuf is None:
                self.assign(key_states, value_states)
                return self.keys, self.values
            if n + m > self._kbuf.shape[-2]:
                self.assign(self.keys, self.values, spare=m + self.SPARE)
            self._kbuf[:, :, n:n + m].copy_(key_states)
            self._vbuf[:, :, n:n + m].copy_(value_states)
            self.keys, self.values = self._kbuf[:, :, :n + m], self._vbuf[:, :, :n + m]
            return self.keys, self.values

    class BatchCache(DynamicCache):
        """A ``DynamicCache`` of :class:`GrowingLayer` layers (full attention in every layer; the
        model's masks still apply sliding windows)."""

        def __init__(self) -> None:
            Cache.__init__(self, layer_class_to_replicate=GrowingLayer)

    return GrowingLayer, BatchCache


_CACHE_CLASSES: tuple[type, type] | None = None


def _batch_cache() -> Any:
    global _CACHE_CLASSES
    if _CACHE_CLASSES is None:
        _CACHE_CLASSES = _make_cache_classes()
    return _CACHE_CLASSES[1]()


@dataclass
class _Request:
    prepared: PreparedRequest
    queue: asyncio.Queue
    grammar: Any = None
    # PEFT adapter name ("__base__" for the base model).
    adapter: str = BASE_ADAPTER
    seqs: list[_Seq] = field(default_factory=list)
    prompt_logprobs: list | None = None
    first_sent: bool = False
    aborted: bool = False

    @property
    def id(self) -> str:
        return self.prepared.request_id

    @property
    def n(self) -> int:
        return self.prepared.sampling.n


@dataclass
class _Seq:
    req: _Request
    index: int
    proc: SequenceProcessor
    sampler: SequenceSampler
    adapter: str
    pos: int  # next position id = tokens of this sequence in the cache
    next_token: int = -1

    @property
    def finished(self) -> bool:
        return self.proc.finished


class _Scheduler:
    """The continuous-batching loop (one thread; owns the model while it runs)."""

    def __init__(self, model: Any, bundle: TokenizerBundle, device: torch.device, max_num_seqs: int,
                 max_num_batched_tokens: int, loop: asyncio.AbstractEventLoop) -> None:
        self.model = model
        self.bundle = bundle
        self.device = device
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.loop = loop
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.waiting: deque[_Request] = deque()
        self.running: list[_Seq] = []
        self.requests: dict[str, _Request] = {}
        self.cache: Any = None
        self.mask: torch.Tensor | None = None
        self.peft = False
        self.grammar_backend: Any = None
        self.shared_generator = torch.Generator(device=device)
        self.shared_generator.seed()
        self.pad_id = bundle.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = bundle.eos_token_ids[0] if bundle.eos_token_ids else 0
        self._pending: list[tuple[asyncio.Queue, Any]] = []
        self.steps = 0
        self.thread = threading.Thread(target=self._run, name="transformers-engine", daemon=True)
        self._stopped = threading.Event()

    # ------------------------------------------------------------ thread-safe entry points
    def start(self) -> None:
        self.thread.start()

    def submit(self, req: _Request) -> None:
        self.inbox.put(("add", req))

    def abort(self, request_id: str) -> None:
        self.inbox.put(("abort", request_id))

    def call(self, fn: Callable[[_Scheduler], Any]) -> asyncio.Future:
        """Run ``fn(scheduler)`` on the scheduler thread between steps; a future of its result."""
        fut = self.loop.create_future()
        self.inbox.put(("call", fn, fut))
        return fut

    def stop(self) -> None:
        self.inbox.put(("stop",))
        self.thread.join(timeout=60)

    def load(self) -> tuple[int, int, float]:
        running = len({s.req.id for s in self.running})
        waiting = len(self.waiting)
        cap = self.max_num_seqs * max(self.bundle.max_model_len, 1)
        used = 0 if self.mask is None else self.mask.shape[0] * self.mask.shape[1]
        return running, waiting, min(1.0, used / cap)

    # ------------------------------------------------------------ loop
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        try:
            while True:
                idle = not self.running and not self.waiting
                try:
                    cmd = self.inbox.get(timeout=None if idle else 0)
                except queue.Empty:
                    cmd = None
                stop = False
                while cmd is not None:
                    if self._command(cmd):
                        stop = True
                    try:
                        cmd = self.inbox.get_nowait()
                    except queue.Empty:
                        cmd = None
                if stop:
                    break
                try:
                    with torch.inference_mode():
                        self._admit()
                        self._flush()  # first tokens out before the next decoding step
                        if self.running:
                            self._decode()
                except Exception as e:
                    log.exception("engine step failed")
                    self._fail_all(e)
                self._flush()
        finally:
            for req in list(self.requests.values()):
                self._finish_request(req, "abort")
            self._flush()
            self.cache = None
            self.mask = None
            self._stopped.set()

    def _command(self, cmd: tuple) -> bool:
        kind = cmd[0]
        if kind == "add":
            req: _Request = cmd[1]
            self.requests[req.id] = req
            self.waiting.append(req)
        elif kind == "abort":
            req = self.requests.get(cmd[1])
            if req is not None:
                self._finish_request(req, "abort")
        elif kind == "call":
            fn, fut = cmd[1], cmd[2]
            try:
                result = fn(self)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                self._call_soon(_set_exception, fut, e)
            else:
                self._call_soon(_set_result, fut, result)
        elif kind == "stop":
            return True
        return False

    # ------------------------------------------------------------ outputs
    def _call_soon(self, fn: Callable, *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the event loop is closed
            log.debug("event loop closed; result of %s dropped", fn)

    def _post(self, req: _Request, item: Any) -> None:
        self._pending.append((req.queue, item))

    def _flush(self) -> None:
        if self._pending:
            items, self._pending = self._pending, []
            try:
                self.loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                log.debug("dropping %d outputs: event loop closed", len(items))

    def _emit(self, req: _Request) -> None:
        deltas: list[CompletionDelta] = []
        for s in req.seqs:
            d = s.proc.take_delta()
            if d is not None:
                deltas.append(d)
        finished = bool(req.seqs) and all(s.finished for s in req.seqs)
        if not deltas and not finished and req.first_sent:
            return
        out = RequestOutput(request_id=req.id, outputs=deltas, finished=finished)
        if not req.first_sent:
            out.prompt_logprobs = req.prompt_logprobs
            req.first_sent = True
        self._post(req, out)
        if finished:
            self.requests.pop(req.id, None)

    def _finish_request(self, req: _Request, reason: str) -> None:
        """End every choice of ``req`` (abort), remove it from the queue and the batch."""
        req.aborted = True
        if req in self.waiting:
            self.waiting.remove(req)
        if not req.seqs:  # never admitted: make placeholder processors so the stream ends cleanly
            p = req.prepared
            req.seqs = [_Seq(req, i, SequenceProcessor(p.bundle, i, p.prompt_ids, 1), None, "", 0)  # type: ignore[arg-type]
                        for i in range(req.n)]
        for s in req.seqs:
            s.proc.finish(reason)  # type: ignore[arg-type]
        self._emit(req)
        self._drop_finished()
        self.requests.pop(req.id, None)

    def _fail_all(self, err: Exception) -> None:
        e = err if isinstance(err, SwiftMeshError) else Internal(f"engine step failed: {type(err).__name__}: {err}")
        for req in list(self.requests.values()):
            self._post(req, e)
        self.requests.clear()
        self.waiting.clear()
        self.running = []
        self.cache = None
        self.mask = None

    # ------------------------------------------------------------ forward helpers
    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any,
                 adapters: list[str], logits_to_keep: int = 0) -> torch.Tensor:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask, "position_ids": pos,
                                      "past_key_values": cache, "use_cache": True}
        if logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        if self.peft:
            kwargs["adapter_names"] = adapters
        return self.model(**kwargs).logits

    def _sample_and_process(self, logits: torch.Tensor, seqs: list[_Seq]) -> None:
        samplers = [s.sampler for s in seqs]
        bitmask_fn = None
        if any(sm.matcher is not None for sm in samplers):
            backend = self.grammar_backend

            def bitmask_fn(rows, x):
                backend.apply([samplers[r].matcher for r in rows], rows, x)

        res = sample(logits, samplers, self.shared_generator, bitmask_fn)
        for i, s in enumerate(seqs):
            tok = res.token_ids[i]
            s.next_token = tok
            s.sampler.output_ids.append(tok)
            done = s.proc.add_token(tok, res.logprobs[i], res.top[i])
            m = s.sampler.matcher
            if m is not None and not done:
                if not m.accept_token(tok):
                    log.warning("grammar rejected token %d of %s", tok, s.req.id)
                    s.proc.finish("stop")
                elif m.is_terminated():
                    s.proc.finish("stop")

    # ------------------------------------------------------------ admission and prefill
    def _admit(self) -> None:
        slots = self.max_num_seqs - len(self.running)
        batch: list[_Request] = []
        tokens = 0
        while self.waiting:
            req = self.waiting[0]
            plen = len(req.prepared.prompt_ids)
            if req.n > slots or (batch and tokens + plen > self.max_num_batched_tokens):
                break
            self.waiting.popleft()
            batch.append(req)
            slots -= req.n
            tokens += plen
        if batch:
            self._prefill(batch)

    def _prefill(self, reqs: list[_Request]) -> None:
        lens = [len(r.prepared.prompt_ids) for r in reqs]
        L = max(lens)
        b = len(reqs)
        ids = torch.full((b, L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, L), dtype=torch.long)
        for i, r in enumerate(reqs):
            ids[i, L - lens[i]:] = torch.tensor(r.prepared.prompt_ids, dtype=torch.long)
            mask[i, L - lens[i]:] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        ids, mask, pos = ids.to(self.device), mask.to(self.device), pos.to(self.device)
        need_full = any(r.prepared.sampling.prompt_logprobs is not None for r in reqs)
        cache = _batch_cache()
        adapters = [r.adapter for r in reqs]
        logits = self._forward(ids, mask, pos, cache, adapters, logits_to_keep=0 if need_full else 1)
        # Zero the padding positions of the new KV so nothing undefined ever enters the batch cache.
        pad = (mask == 0)[:, None, :, None]
        for layer in cache.layers:
            layer.keys.masked_fill_(pad, 0)
            layer.values.masked_fill_(pad, 0)
        for i, r in enumerate(reqs):
            k = r.prepared.sampling.prompt_logprobs
            if k is not None:
                pl = prompt_logprobs(logits[i, L - lens[i]:], r.prepared.prompt_ids, k)
                bundle = r.prepared.bundle
                ids_ = r.prepared.prompt_ids
                r.prompt_logprobs = [bundle.logprob_entry(ids_[0], None)] + [
                    bundle.logprob_entry(ids_[j + 1], lp, top) for j, (lp, top) in enumerate(pl)]
        last = logits[:, -1, :]
        rows: list[int] = []
        new: list[_Seq] = []
        for i, r in enumerate(reqs):
            p = r.prepared
            sp = p.sampling
            for c in range(r.n):
                gen = None
                if sp.seed is not None:
                    gen = torch.Generator(device=self.device)
                    gen.manual_seed((sp.seed + c) % (2**63))
                out_ids: list[int] = []
                matcher = self.grammar_backend.matcher(r.grammar) if r.grammar is not None else None
                # min_tokens masks these until reached (EOS only when it would stop the choice)
                stop_ids = list(sp.stop_token_ids) + ([] if sp.ignore_eos else list(p.bundle.eos_token_ids))
                sampler = SequenceSampler(sp, p.prompt_ids, out_ids, self.device, gen, matcher, stop_ids)
                proc = SequenceProcessor(
                    p.bundle, c, p.prompt_ids, sp.max_tokens, sp.stop, sp.stop_token_ids, sp.ignore_eos,
                    sp.min_tokens, sp.skip_special_tokens, sp.logprobs)
                s = _Seq(r, c, proc, sampler, r.adapter, pos=lens[i])
                r.seqs.append(s)
                new.append(s)
                rows.append(i)
        idx = torch.tensor(rows, device=self.device)
        self._sample_and_process(last.index_select(0, idx), new)
        for r in reqs:
            self._emit(r)
        # Merge the still-running new sequences into the batch cache.
        keep = [j for j, s in enumerate(new) if not s.finished]
        if not keep:
            return
        sel = torch.tensor([rows[j] for j in keep], device=self.device)
        new_kv = [(layer.keys.index_select(0, sel), layer.values.index_select(0, sel)) for layer in cache.layers]
        new_mask = mask.index_select(0, sel)
        self._merge(cache, new_kv, new_mask, [new[j] for j in keep])

    def _merge(self, cache: Any, new_kv: list[tuple[torch.Tensor, torch.Tensor]], new_mask: torch.Tensor,
               seqs: list[_Seq]) -> None:
        if self.cache is None or not self.running:
            for layer, (k, v) in zip(cache.layers, new_kv):
                layer.assign(k, v)
            self.cache, self.mask, self.running = cache, new_mask, list(seqs)
            return
        T, L = self.mask.shape[1], new_mask.shape[1]
        width = max(T, L)

        def lpad(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
            if n == 0:
                return t
            shape = list(t.shape)
            shape[dim] = n
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        for layer, (k, v) in zip(self.cache.layers, new_kv):
            layer.assign(torch.cat([lpad(layer.keys, width - T, 2), lpad(k, width - L, 2)], dim=0),
                         torch.cat([lpad(layer.values, width - T, 2), lpad(v, width - L, 2)], dim=0))
        self.mask = torch.cat([lpad(self.mask, width - T, 1), lpad(new_mask, width - L, 1)], dim=0)
        self.running.extend(seqs)

    # ------------------------------------------------------------ decoding
    def _decode(self) -> None:
        seqs = self.running
        B = len(seqs)
        ids = torch.tensor([[s.next_token] for s in seqs], dtype=torch.long, device=self.device)
        pos = torch.tensor([[s.pos] for s in seqs], dtype=torch.long, device=self.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones((B, 1))], dim=1)
        logits = self._forward(ids, self.mask, pos, self.cache, [s.adapter for s in seqs])
        for s in seqs:
            s.pos += 1
        self._sample_and_process(logits[:, -1, :], seqs)
        self.steps += 1
        for req in {s.req.id: s.req for s in seqs}.values():
            self._emit(req)
        self._drop_finished()

    def _drop_finished(self) -> None:
        if not any(s.finished for s in self.running):
            return
        keep = [i for i, s in enumerate(self.running) if not s.finished]
        if not keep:
            self.running, self.cache, self.mask = [], None, None
            return
        idx = torch.tensor(keep, device=self.device)
        mask = self.mask.index_select(0, idx)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else 0
        for layer in self.cache.layers:
            layer.select(idx, start)
        self.mask = mask[:, start:]
        self.running = [self.running[i] for i in keep]


def _set_result(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _deliver(items: list[tuple[asyncio.Queue, Any]]) -> None:
    for q, item in items:
        q.put_nowait(item)


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
        self._sched: _Scheduler | None = None
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
        sched = _Scheduler(model, bundle, torch.device(self.device), self.config.max_num_seqs,
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

        def load(s: _Scheduler) -> None:
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

        def unload(s: _Scheduler) -> None:
            if not s.peft or peft_name is None:
                return
            remaining = [a for a in s.model.peft_config if a != peft_name]
            if not remaining:
                s.model = s.model.unload()  # back to the plain base model
                s.peft = False
            else:
                s.model.delete_adapter(peft_name)

        await sched.call(unload)

    def _require(self) -> _Scheduler:
        if self._sched is None:
            from swiftmesh.runtime.errors import FailedPrecondition

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
        r = _Request(req, q, grammar, adapter=self._peft_names[req.adapter] if req.adapter else BASE_ADAPTER)
        sched.submit(r)
        while True:
            item = await q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finished:
                return

    async def abort(self, request_id: str) -> None:
        if self._sched is not None:
            self._sched.abort(request_id)

    def _load_status(self) -> tuple[int, int, float]:
        return self._sched.load() if self._sched is not None else (0, 0, 0.0)

    async def shutdown(self) -> None:
        await super().shutdown()


__all__ = ["TransformersEngine", "resolve_dtype"]
