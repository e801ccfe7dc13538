"""Batched logits processing and sampling (the transformers engine's sampler)."""

from __future__ import annotations

import math

import torch
from swiftmesh.services.gateway.engines.sampling import SequenceSampler, prompt_logprobs, sample
from swiftmesh.services.gateway.engines.types import SamplingParams

CPU = torch.device("cpu")
V = 50


def seq(out=None, prompt=(1, 2, 3), seed=None, stop_ids=(), **kw) -> SequenceSampler:
    gen = None
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
    return SequenceSampler(SamplingParams(**kw), list(prompt), list(out or []), CPU, gen, None, list(stop_ids))


def logits(rows: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax_and_top_k_1_is_greedy():
    x = logits(3)
    res = sample(x, [seq(temperature=0), seq(temperature=1.0, top_k=1), seq(temperature=0.7, top_p=1e-6)])
    assert res.token_ids == x.argmax(-1).tolist()


def test_seeded_rows_reproduce_whatever_else_is_in_the_batch():
    x = logits(4, seed=1)
    a = sample(x, [seq(seed=7, temperature=1.0) for _ in range(4)]).token_ids
    b = sample(x, [seq(seed=7, temperature=1.0) for _ in range(4)]).token_ids
    assert a == b
    # the same row alone, and next to different neighbours
    alone = sample(x[2:3], [seq(seed=7, temperature=1.0)]).token_ids
    assert alone == [a[2]]
    draws = {tuple(sample(logits(1, seed=2), [seq(seed=s, temperature=1.5)]).token_ids) for s in range(20)}
    assert len(draws) > 1  # different seeds draw differently


def test_logit_bias_forces_and_bans_tokens():
    x = logits(2)
    res = sample(x, [seq(temperature=0, logit_bias={17: 100.0}), seq(temperature=1.0, seed=0, logit_bias={17: 100.0})])
    assert res.token_ids == [17, 17]
    top = int(x[0].argmax())
    res = sample(x[:1], [seq(temperature=0, logit_bias={top: -100.0})])
    assert res.token_ids[0] != top


def test_min_tokens_masks_stop_tokens_until_reached():
    x = torch.zeros(1, V)
    x[0, 5] = 10.0  # "EOS" is the favourite
    res = sample(x, [seq(temperature=0, min_tokens=2, stop_ids=[5], out=[9])])
    assert res.token_ids[0] != 5
    res = sample(x, [seq(temperature=0, min_tokens=2, stop_ids=[5], out=[9, 9])])
    assert res.token_ids[0] == 5


def test_penalties_follow_openai_and_vllm_semantics():
    x = torch.zeros(1, V)
    x[0, 3] = 1.0
    x[0, 4] = 0.9
    # token 3 generated twice: frequency 0.2*2 + presence 0.1 pushes it below token 4
    res = sample(x.clone(), [seq(temperature=0, out=[3, 3], frequency_penalty=0.2, presence_penalty=0.1)])
    assert res.token_ids == [4]
    res = sample(x.clone(), [seq(temperature=0, out=[3], frequency_penalty=0.05)])
    assert res.token_ids == [3]
    # repetition penalty covers the prompt too: 1.0 / 1.2 < 0.9
    res = sample(x.clone(), [seq(temperature=0, prompt=[3], repetition_penalty=1.2)])
    assert res.token_ids == [4]


def test_top_p_and_min_p_restrict_the_support():
    x = torch.full((1, V), -10.0)
    x[0, 1], x[0, 2], x[0, 3] = 5.0, 4.0, 0.0
    picks = {sample(x, [seq(seed=s, temperature=1.0, top_p=0.5)]).token_ids[0] for s in range(30)}
    assert picks == {1}
    picks = {sample(x, [seq(seed=s, temperature=1.0, min_p=0.2)]).token_ids[0] for s in range(50)}
    assert picks <= {1, 2} and 1 in picks


def test_logprobs_are_raw_and_top_sorted():
    x = logits(2)
    res = sample(x, [seq(temperature=0.5, seed=3, logprobs=3), seq(temperature=0)])
    raw = torch.log_softmax(x, -1)
    t = res.token_ids[0]
    assert math.isclose(res.logprobs[0], float(raw[0, t]), rel_tol=1e-5)
    assert [i for i, _ in res.top[0]] == raw[0].topk(3).indices.tolist()
    assert res.logprobs[1] is None and res.top[1] == []


def test_prompt_logprobs_shapes_and_values():
    x = logits(4)[:, :]  # 4 positions
    ids = [7, 8, 9, 10]
    out = prompt_logprobs(x, ids, 2)
    assert len(out) == 3
    raw = torch.log_softmax(x, -1)
    for j, (lp, top) in enumerate(out):
        assert math.isclose(lp, float(raw[j, ids[j + 1]]), rel_tol=1e-5)
        assert len(top) == 2 and top[0][1] >= top[1][1]
