"""Batched logits processing and sampling in torch, for engines that own their decoding loop
(the transformers engine).

Order of operations, as in vLLM v1's sampler: logit_bias, min_tokens (EOS and stop tokens
masked), grammar mask, repetition / frequency / presence penalties, then greedy argmax, or
temperature -> min_p -> top_k -> top_p -> a draw from the row's own ``torch.Generator``
(seeded requests are reproducible whatever else is in the batch). Log-probabilities are taken
from the raw logits (vLLM's default ``logprobs_mode="raw_logprobs"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .types import SamplingParams

NEG_INF = float("-inf")


@dataclass
class SequenceSampler:
    """Sampling state of one sequence (one choice of a request).

    Args:
        params: the request's sampling parameters.
        prompt_ids: prompt token ids (repetition penalty covers them).
        output_ids: generated token ids so far (shared with the caller, appended by it).
        generator: the row's random generator (None: the engine's shared one).
        matcher: a grammar matcher (``structured.GrammarMatcher``) or None.
        stop_ids: token ids masked while fewer than ``min_tokens`` were generated.
    """

    params: SamplingParams
    prompt_ids: Sequence[int]
    output_ids: list[int]
    device: torch.device
    generator: torch.Generator | None = None
    matcher: Any = None
    stop_ids: Sequence[int] = ()
    _bias: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False)
    _prompt_set: torch.Tensor | None = field(default=None, init=False)
    _stop_tensor: torch.Tensor | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        p = self.params
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias.keys()), dtype=torch.long, device=self.device)
            vals = torch.tensor(list(p.logit_bias.values()), dtype=torch.float32, device=self.device)
            self._bias = (ids, vals)
        if p.repetition_penalty != 1.0:
            self._prompt_set = torch.tensor(sorted(set(self.prompt_ids)), dtype=torch.long, device=self.device)
        if p.min_tokens and self.stop_ids:
            self._stop_tensor = torch.tensor(sorted(set(self.stop_ids)), dtype=torch.long, device=self.device)

    @property
    def needs_penalties(self) -> bool:
        p = self.params
        return p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0


@dataclass
class SampleResult:
    """Per row: the sampled token, its raw logprob and the top alternatives (when asked)."""

    token_ids: list[int]
    logprobs: list[float | None]
    top: list[list[tuple[int, float]]]


def _apply_penalties(row: torch.Tensor, s: SequenceSampler) -> None:
    p = s.params
    vocab = row.shape[0]
    if p.repetition_penalty != 1.0:
        seen = s._prompt_set
        if s.output_ids:
            out = torch.tensor(s.output_ids, dtype=torch.long, device=row.device)
            seen = torch.cat([seen, out]).unique() if seen is not None else out.unique()
        if seen is not None and seen.numel():
            seen = seen[seen < vocab]
            vals = row[seen]
            row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and s.output_ids:
        out = torch.tensor(s.output_ids, dtype=torch.long, device=row.device)
        counts = torch.bincount(out, minlength=vocab)[:vocab].to(row.dtype)
        row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)


def _top_k_top_p(logits: torch.Tensor, k: torch.Tensor | None, p: torch.Tensor | None) -> torch.Tensor:
    """Mask logits outside each row's top-k and nucleus (k: [B] long, p: [B] float)."""
    sorted_logits, idx = logits.sort(dim=-1, descending=False)
    if k is not None:
        thresh_pos = (sorted_logits.size(1) - k).clamp(min=0).unsqueeze(1)
        thresh = sorted_logits.gather(1, thresh_pos)
        sorted_logits.masked_fill_(sorted_logits < thresh, NEG_INF)
    if p is not None:
        probs = sorted_logits.softmax(dim=-1)
        cum = probs.cumsum(dim=-1)
        mask = cum <= (1 - p.unsqueeze(1))
        mask[:, -1] = False
        sorted_logits.masked_fill_(mask, NEG_INF)
    return sorted_logits.scatter(-1, idx, sorted_logits)


def sample(
    logits: torch.Tensor,
    seqs: Sequence[SequenceSampler],
    shared_generator: torch.Generator | None = None,
    bitmask_fn: Any = None,
) -> SampleResult:
    """Process ``logits`` ([B, V], any float dtype) for each row's parameters and draw one token per row.

    ``bitmask_fn(rows, logits)`` applies grammar masks in place to the given row indices.
    Returns a :class:`SampleResult`; logprobs are None for rows that did not ask for them.
    """
    x = logits.float()
    raw_lp = None
    want_lp = [s.params.logprobs is not None for s in seqs]
    if any(want_lp):
        raw_lp = torch.log_softmax(x, dim=-1)
    if x.data_ptr() == logits.data_ptr():
        x = x.clone()

    grammar_rows = []
    for i, s in enumerate(seqs):
        row = x[i]
        if s._bias is not None:
            row.index_add_(0, s._bias[0], s._bias[1])
        if s._stop_tensor is not None and len(s.output_ids) < s.params.min_tokens:
            row[s._stop_tensor] = NEG_INF
        if s.needs_penalties:
            _apply_penalties(row, s)
        if s.matcher is not None:
            grammar_rows.append(i)
    if grammar_rows and bitmask_fn is not None:
        before = x[grammar_rows].clone()
        bitmask_fn(grammar_rows, x)
        dead = torch.isinf(x[grammar_rows]).all(dim=-1)
        if bool(dead.any()):  # min_tokens masked the only tokens the grammar allows: the grammar wins
            for j in dead.nonzero().flatten().tolist():
                r = grammar_rows[j]
                x[r] = before[j]
                s = seqs[r]
                if s._stop_tensor is not None:
                    x[r][s._stop_tensor] = logits[r][s._stop_tensor].float()
                bitmask_fn([r], x)

    B = x.shape[0]
    tokens = [0] * B
    greedy = [i for i, s in enumerate(seqs) if s.params.greedy]
    if greedy:
        g = torch.tensor(greedy, device=x.device)
        picks = x.index_select(0, g).argmax(dim=-1).tolist()
        for i, t in zip(greedy, picks):
            tokens[i] = t
    sampled = [i for i, s in enumerate(seqs) if not s.params.greedy]
    if sampled:
        sidx = torch.tensor(sampled, device=x.device)
        xs = x.index_select(0, sidx)
        temps = torch.tensor([seqs[i].params.temperature for i in sampled], device=x.device, dtype=xs.dtype)
        xs = xs / temps.unsqueeze(1)
        min_ps = [seqs[i].params.min_p for i in sampled]
        if any(min_ps):
            probs = xs.softmax(dim=-1)
            top = probs.max(dim=-1, keepdim=True).values
            mp = torch.tensor(min_ps, device=x.device, dtype=xs.dtype).unsqueeze(1)
            xs = xs.masked_fill(probs < mp * top, NEG_INF)
        ks = [seqs[i].params.top_k for i in sampled]
        ps = [seqs[i].params.top_p for i in sampled]
        vocab = xs.shape[1]
        k_t = (torch.tensor([k if k > 0 else vocab for k in ks], device=x.device, dtype=torch.long)
               if any(k > 0 for k in ks) else None)
        p_t = torch.tensor(ps, device=x.device, dtype=xs.dtype) if any(p < 1.0 for p in ps) else None
        if k_t is not None or p_t is not None:
            xs = _top_k_top_p(xs, k_t, p_t)
        probs = xs.softmax(dim=-1)
        for j, i in enumerate(sampled):
            gen = seqs[i].generator or shared_generator
            tokens[i] = int(torch.multinomial(probs[j], 1, generator=gen).item())

    lps: list[float | None] = [None] * B
    tops: list[list[tuple[int, float]]] = [[] for _ in range(B)]
    if raw_lp is not None:
        rows = [i for i in range(B) if want_lp[i]]
        r = torch.tensor(rows, device=x.device)
        chosen = raw_lp.index_select(0, r).gather(1, torch.tensor([[tokens[i]] for i in rows], device=x.device))
        chosen = chosen.squeeze(1).tolist()
        kmax = max(seqs[i].params.logprobs or 0 for i in rows)
        if kmax:
            tv, ti = raw_lp.index_select(0, r).topk(kmax, dim=-1)
            tv, ti = tv.tolist(), ti.tolist()
        for j, i in enumerate(rows):
            lps[i] = chosen[j]
            k = seqs[i].params.logprobs or 0
            if k:
                tops[i] = list(zip(ti[j][:k], tv[j][:k]))
    return SampleResult(tokens, lps, tops)


def prompt_logprobs(logits: torch.Tensor, prompt_ids: Sequence[int], k: int) -> list[tuple[float, list[tuple[int, float]]]]:
    """Logprob of each prompt token after the first given the ones before, with the top ``k``.

    ``logits``: [L, V] for the L prompt positions. Returns L-1 entries (position 1..L-1).
    """
    if len(prompt_ids) < 2:
        return []
    lp = torch.log_softmax(logits[:-1].float(), dim=-1)
    target = torch.tensor(prompt_ids[1:], device=lp.device).unsqueeze(1)
    chosen = lp.gather(1, target).squeeze(1).tolist()
    if k:
        tv, ti = lp.topk(k, dim=-1)
        tv, ti = tv.tolist(), ti.tolist()
        return [(chosen[j], list(zip(ti[j], tv[j]))) for j in range(len(chosen))]
    return [(c, []) for c in chosen]
