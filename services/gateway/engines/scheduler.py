"""The continuous-batching scheduler of the transformers engine.

A scheduler thread owns the model and runs a loop of steps. Each step:

1. takes new requests, aborts and admin calls from its inbox;
2. admits waiting requests while there are free slots (``max_num_seqs`` sequences) and prefill
   budget (``max_num_batched_tokens`` prompt tokens): their prompts are prefilled together
   (left-padded), their first tokens sampled, and their KV caches merged into the running batch
   (:mod:`.kv_cache`);
3. decodes one token for every running sequence in one forward pass, samples, detokenizes,
   checks stop conditions, streams the deltas, and drops finished sequences from the batch.

So a request arriving while others decode joins at the next step, and a finished one frees its
slot (and KV cache) at once. Rows of different PEFT adapters share a batch (``adapter_names``,
``"__base__"`` for the base model). Outputs reach the event loop in one ``call_soon_threadsafe``
per step.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from swiftmesh.runtime.errors import Internal, SwiftMeshError

from . import kv_cache as kv
from .base import PreparedRequest
from .processing import SequenceProcessor, TokenizerBundle
from .sampling import SequenceSampler, prompt_logprobs, sample
from .types import CompletionDelta, RequestOutput

log = logging.getLogger("swiftmesh.engines.transformers")

#: PEFT adapter name of rows that use the base model.
BASE_ADAPTER = "__base__"


@dataclass
class EngineRequest:
    """A request in the scheduler: its prepared form, the queue its outputs go to, its grammar
    (structured output) and PEFT adapter, and one :class:`Sequence` per choice once admitted."""

    prepared: PreparedRequest
    queue: asyncio.Queue
    grammar: Any = None
    # PEFT adapter name ("__base__" for the base model).
    adapter: str = BASE_ADAPTER
    seqs: list[Sequence] = field(default_factory=list)
    prompt_logprobs: list | None = None
    first_sent: bool = False
    aborted: bool = False

    @property
    def id(self) -> str:
        """The request id."""
        return self.prepared.request_id

    @property
    def n(self) -> int:
        """Choices asked for."""
        return self.prepared.sampling.n


@dataclass
class Sequence:
    """One choice of a request in the running batch: its processor (detokenizing, stop
    conditions), sampler, adapter and next position id."""

    req: EngineRequest
    index: int
    proc: SequenceProcessor
    sampler: SequenceSampler
    adapter: str
    pos: int  # next position id = tokens of this sequence in the cache
    next_token: int = -1

    @property
    def finished(self) -> bool:
        """Whether this choice has finished."""
        return self.proc.finished


class Scheduler:
    """The continuous-batching loop (one thread; owns the model while it runs).

    Args:
        model: the causal LM (a ``peft.PeftModel`` once adapters are loaded: set ``peft``).
        bundle: the base model's tokenizer bundle (pad id, context length).
        device: where the model runs.
        max_num_seqs: sequences decoded together at most (slots).
        max_num_batched_tokens: prompt tokens prefilled in one step at most.
        loop: the event loop results are delivered on (request queues, call futures).
    """

    def __init__(self, model: Any, bundle: TokenizerBundle, device: torch.device, max_num_seqs: int,
                 max_num_batched_tokens: int, loop: asyncio.AbstractEventLoop) -> None:
        self.model = model
        self.bundle = bundle
        self.device = device
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.loop = loop
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.waiting: deque[EngineRequest] = deque()
        self.running: list[Sequence] = []
        self.requests: dict[str, EngineRequest] = {}
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
        """Start the scheduler thread."""
        self.thread.start()

    def submit(self, req: EngineRequest) -> None:
        """Queue a request; it is admitted at the next step with room."""
        self.inbox.put(("add", req))

    def abort(self, request_id: str) -> None:
        """Abort a request (its choices finish with reason ``abort``); unknown ids are ignored."""
        self.inbox.put(("abort", request_id))

    def call(self, fn: Callable[[Scheduler], Any]) -> asyncio.Future:
        """Run ``fn(scheduler)`` on the scheduler thread between steps; a future of its result."""
        fut = self.loop.create_future()
        self.inbox.put(("call", fn, fut))
        return fut

    def stop(self) -> None:
        """Stop the thread (unfinished requests are aborted); waits up to 60 s."""
        self.inbox.put(("stop",))
        self.thread.join(timeout=60)

    def load(self) -> tuple[int, int, float]:
        """(running requests, waiting requests, KV-cache fraction in use)."""
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
            req: EngineRequest = cmd[1]
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

    def _post(self, req: EngineRequest, item: Any) -> None:
        self._pending.append((req.queue, item))

    def _flush(self) -> None:
        if self._pending:
            items, self._pending = self._pending, []
            try:
                self.loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                log.debug("dropping %d outputs: event loop closed", len(items))

    def _emit(self, req: EngineRequest) -> None:
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

    def _finish_request(self, req: EngineRequest, reason: str) -> None:
        """End every choice of ``req`` (abort), remove it from the queue and the batch."""
        req.aborted = True
        if req in self.waiting:
            self.waiting.remove(req)
        if not req.seqs:  # never admitted: make placeholder processors so the stream ends cleanly
            p = req.prepared
            req.seqs = [Sequence(req, i, SequenceProcessor(p.bundle, i, p.prompt_ids, 1), None, "", 0)  # type: ignore[arg-type]
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

    def _sample_and_process(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
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
        batch: list[EngineRequest] = []
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

    def _prefill(self, reqs: list[EngineRequest]) -> None:
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
        cache = kv.new_batch_cache()
        adapters = [r.adapter for r in reqs]
        logits = self._forward(ids, mask, pos, cache, adapters, logits_to_keep=0 if need_full else 1)
        kv.zero_padding(cache, mask)
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
        new: list[Sequence] = []
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
                s = Sequence(r, c, proc, sampler, r.adapter, pos=lens[i])
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
        batch = self.cache if self.running else None
        self.cache, self.mask = kv.merge(batch, self.mask, cache, kv.take_rows(cache, sel), mask.index_select(0, sel))
        seqs = [new[j] for j in keep]
        self.running = list(seqs) if batch is None else self.running + seqs

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
        self.mask = kv.keep_rows(self.cache, self.mask, torch.tensor(keep, device=self.device))
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
