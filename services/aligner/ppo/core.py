"""The numerical core of PPO for RLHF, as pure tensor functions (unit-tested on their own).

Notation, per rollout ``i`` and response token ``t`` (``T`` = response length):

* ``mask[i, t]`` is 1 for the response's real tokens: up to and including the first EOS,
  0 after it (Huang et al. 2024, arXiv:2403.17031, detail "truncate after EOS").
* The per-token reward is ``r[i, t] = -kl_coef * kl[i, t]`` plus the sequence score on the
  last real token (Ziegler et al. 2019, arXiv:1909.08593; Ouyang et al. 2022, arXiv:2203.02155).
* Advantages are GAE(gamma, lambda) (Schulman et al. 2016, arXiv:1506.02438) with the value
  after the last real token taken as 0 (the episode ends there), returns ``A + V``.
* The policy loss is PPO's clipped surrogate and the value loss its clipped squared error
  (Schulman et al. 2017, arXiv:1707.06347), both averaged over real tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def first_true_indices(bools: torch.Tensor, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Index of the first True along the last dim of a 2-D bool tensor; its length when none."""
    row_len = bools.size(-1)
    zero_or_index = row_len * (~bools).to(dtype) + torch.arange(row_len, dtype=dtype, device=bools.device)
    return torch.min(zero_or_index, dim=-1).values


def response_mask(responses: torch.Tensor, stop_token_ids: list[int] | tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask of the real tokens of generated responses: everything up to and including the first
    stop token (EOS), nothing after it.

    Args:
        responses: ``(B, T)`` generated token ids.
        stop_token_ids: ids that end a response.

    Returns:
        ``(mask, lengths, has_eos)``: ``mask`` ``(B, T)`` float, ``lengths`` ``(B,)`` number of
        real tokens, ``has_eos`` ``(B,)`` bool (a stop token was generated).
    """
    is_stop = torch.zeros_like(responses, dtype=torch.bool)
    for sid in stop_token_ids:
        is_stop |= responses == sid
    first = first_true_indices(is_stop)
    T = responses.size(1)
    has_eos = first < T
    lengths = torch.where(has_eos, first + 1, torch.full_like(first, T))
    positions = torch.arange(T, device=responses.device).unsqueeze(0)
    mask = (positions < lengths.unsqueeze(1)).float()
    return mask, lengths, has_eos


def truncate_after_eos(responses: torch.Tensor, mask: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Replace every token after the first EOS with ``pad_token_id``."""
    return torch.where(mask.bool(), responses, torch.full_like(responses, pad_token_id))


def masked_sum(values: torch.Tensor, mask: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is set (over ``axis`` when given)."""
    return (values * mask).sum() if axis is None else (values * mask).sum(axis)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (over everything, or along ``axis``)."""
    if axis is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(axis) / mask.sum(axis).clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``values`` where ``mask`` is 1 (Bessel-corrected when ``unbiased``)."""
    mean = masked_mean(values, mask)
    centered = values - mean
    var = masked_mean(centered**2, mask)
    if unbiased:
        n = mask.sum()
        if n > 1:
            var = var * n / (n - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``values`` to unit variance over the mask (and zero mean when ``shift_mean``)."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def per_token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from log-probabilities of the sampled tokens.

    ``k1``: ``log pi - log pi_ref`` (unbiased, can be negative); ``k3``: ``(r - 1) - log r`` with
    ``r = pi_ref / pi`` (unbiased, never negative, lower variance) (Schulman 2020,
    "Approximating KL divergence").
    """
    logr = ref_logprobs - logprobs
    if estimator == "k1":
        return -logr
    if estimator == "k3":
        return torch.expm1(logr) - logr
    raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1' or 'k3'")


def shape_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: ``-kl_coef * kl`` on every real token, plus the score on the last one.

    Returns ``(rewards, non_score_rewards)``, both ``(B, T)`` and 0 after the response ends.
    """
    non_score = -kl_coef * kl * mask
    rewards = non_score.clone()
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rows = torch.arange(rewards.size(0), device=rewards.device)
    has_tokens = mask.sum(1) > 0
    rewards[rows[has_tokens], last[has_tokens]] += scores[has_tokens].to(rewards.dtype)
    return rewards, non_score


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, arXiv:1506.02438).

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``,
    with ``V`` and ``r`` taken as 0 outside ``mask`` (so the value after the last real token is 0).

    Returns ``(advantages, returns)``, ``returns = advantages + values``; both 0 outside ``mask``.
    """
    values = values * mask
    rewards = rewards * mask
    T = rewards.size(1)
    advantages_reversed = []
    lastgaelam = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        nextvalues = values[:, t + 1] if t < T - 1 else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1) * mask
    returns = (advantages + values) * mask
    return advantages, returns


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, cliprange: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate objective (Schulman et al. 2017, eq. 7), as a loss to minimise:
    ``mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))`` over real tokens.

    Returns ``(loss, stats)`` with ``clipfrac`` (fraction of tokens where clipping was active),
    ``approxkl`` (``0.5 * mean(logratio^2)``) and ``ratio`` (mean probability ratio).
    """
    logratio = logprobs - old_logprobs
    ratio = torch.exp(logratio)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(pg_losses, pg_losses2), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((pg_losses2 > pg_losses).float(), mask),
            "approxkl": 0.5 * masked_mean(logratio**2, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(vpreds: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: ``0.5 * mean(max((V - R)^2, (clip(V, V_old +- eps_v) - R)^2))``
    over real tokens. Returns ``(loss, stats)`` with ``clipfrac``."""
    vpredclipped = old_values + torch.clamp(vpreds - old_values, -cliprange_value, cliprange_value)
    vf_losses1 = (vpreds - returns) ** 2
    vf_losses2 = (vpredclipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((vf_losses2 > vf_losses1).float(), mask)}
    return loss, stats


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[tokens]`` without keeping the full log-softmax around."""
    logits = logits.float()
    return torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution of each position's logits."""
    logits = logits.float()
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)
