"""The PPO math against hand computations: masking after EOS, KL, reward shaping, GAE,
whitening, clipped policy and value losses."""

from __future__ import annotations

import math

import pytest
import torch

from swiftmesh.services.aligner.ppo import core

EOS, PAD = 2, 0


def test_mask_ends_at_the_first_eos_inclusive():
    r = torch.tensor([[5, 7, EOS, 9, EOS], [5, 5, 5, 5, 5], [EOS, 4, 4, 4, 4]])
    mask, lengths, has_eos = core.response_mask(r, [EOS])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert lengths.tolist() == [3, 5, 1] and has_eos.tolist() == [True, False, True]
    assert core.truncate_after_eos(r, mask, PAD).tolist() == [[5, 7, EOS, PAD, PAD], [5, 5, 5, 5, 5],
                                                              [EOS, PAD, PAD, PAD, PAD]]
    # Several stop tokens: the first of any of them ends the response.
    mask2, lengths2, _ = core.response_mask(torch.tensor([[5, 9, 7, EOS]]), [EOS, 9])
    assert lengths2.tolist() == [2] and mask2.tolist() == [[1, 1, 0, 0]]
    assert core.first_true_indices(torch.tensor([[False, False], [False, True]])).tolist() == [2, 1]


def test_kl_estimators():
    lp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -2.0, -0.1])
    assert torch.allclose(core.per_token_kl(lp, ref, "k1"), torch.tensor([0.5, 0.0, -0.4]))
    k3 = core.per_token_kl(lp, ref, "k3")
    expected = [math.exp(-0.5) - 1 + 0.5, 0.0, math.exp(0.4) - 1 - 0.4]
    assert torch.allclose(k3, torch.tensor(expected), atol=1e-6) and (k3 >= 0).all()
    with pytest.raises(ValueError):
        core.per_token_kl(lp, ref, "k2")


def test_rewards_are_the_kl_penalty_plus_the_score_on_the_last_real_token():
    kl = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.5, 0.5, 0.5, 0.5]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    rewards, non_score = core.shape_rewards(torch.tensor([2.0, -1.0]), kl, mask, kl_coef=0.1)
    assert torch.allclose(non_score, torch.tensor([[-0.01, -0.02, -0.03, 0.0], [-0.05] * 4]))
    assert torch.allclose(rewards, torch.tensor([[-0.01, -0.02, 1.97, 0.0], [-0.05, -0.05, -0.05, -1.05]]))


def test_gae_matches_a_hand_computation():
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 0.2, 0.1]])
    g, lam = 0.9, 0.8
    adv, ret = core.compute_gae(rewards, values, torch.ones(1, 3), g, lam)
    d2 = 2 + g * 0 - 0.1
    d1 = 0 + g * 0.1 - 0.2
    d0 = 1 + g * 0.2 - 0.5
    a2, a1 = d2, d1 + g * lam * d2
    a0 = d0 + g * lam * a1
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[a0 + 0.5, a1 + 0.2, a2 + 0.1]]), atol=1e-6)
    # gamma = lam = 1: the advantage is the return-to-go minus the value.
    adv1, _ = core.compute_gae(rewards, values, torch.ones(1, 3), 1.0, 1.0)
    assert torch.allclose(adv1, torch.tensor([[3 - 0.5, 2 - 0.2, 2 - 0.1]]), atol=1e-6)
    # lam = 0: one-step TD errors.
    adv0, _ = core.compute_gae(rewards, values, torch.ones(1, 3), g, 0.0)
    assert torch.allclose(adv0, torch.tensor([[d0, d1, d2]]), atol=1e-6)


def test_gae_ends_the_episode_at_the_mask_and_ignores_what_follows():
    rewards = torch.tensor([[1.0, 3.0, 100.0, -7.0]])
    values = torch.tensor([[0.5, 0.2, 50.0, 8.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    adv, ret = core.compute_gae(rewards, values, mask, 0.9, 0.8)
    d1 = 3 + 0.9 * 0 - 0.2  # the value after the last real token counts as 0
    d0 = 1 + 0.9 * 0.2 - 0.5
    assert torch.allclose(adv, torch.tensor([[d0 + 0.72 * d1, d1, 0.0, 0.0]]), atol=1e-6)
    assert ret[0, 2:].abs().sum() == 0


def test_masked_whitening_uses_only_real_tokens():
    x = torch.tensor([[1.0, 2.0, 3.0, 1000.0], [4.0, 5.0, -1000.0, 6.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0]])
    w = core.masked_whiten(x, m)
    vals = w[m.bool()]
    assert abs(vals.mean().item()) < 1e-6
    real = x[m.bool()]
    assert torch.allclose(vals, (real - real.mean()) / real.std(), atol=1e-5)  # unbiased variance
    kept = core.masked_whiten(x, m, shift_mean=False)[m.bool()]
    assert abs(kept.mean().item() - real.mean().item()) < 1e-5
    assert core.masked_mean(x, m).item() == pytest.approx(21 / 6)
    assert core.masked_mean(x, m, axis=1).tolist() == pytest.approx([2.0, 5.0])


def test_clipped_policy_loss_by_hand():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]])).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, st = core.policy_loss(new, old, adv, torch.ones(1, 4), cliprange=0.2)
    # per token max(-A r, -A clip(r)): [-1.2 (clipped), 1.5, -0.5, 0.8 (clipped)]
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8) / 4)
    assert st["clipfrac"].item() == pytest.approx(0.5)
    assert st["ratio"].item() == pytest.approx(1.0)
    assert st["approxkl"].item() == pytest.approx(0.5 * (2 * math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2) / 4)
    loss.backward()
    # Clipped tokens give no gradient; the others d/dlogp(-A r) = -A r.
    assert new.grad[0].tolist() == pytest.approx([0.0, 1.5 / 4, -0.5 / 4, 0.0])


def test_policy_loss_ignores_tokens_after_eos():
    old = torch.zeros(1, 4)
    new = torch.tensor([[0.1, -0.1, 50.0, -50.0]])
    adv = torch.tensor([[1.0, 2.0, 1e6, -1e6]])
    m = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    a, _ = core.policy_loss(new, old, adv, m, 0.2)
    b, _ = core.policy_loss(new[:, :2], old[:, :2], adv[:, :2], m[:, :2], 0.2)
    assert a.item() == pytest.approx(b.item())


def test_clipped_value_loss_by_hand():
    vpred = torch.tensor([[2.0, 1.5]], requires_grad=True)
    old = torch.tensor([[1.0, 1.0]])
    ret = torch.tensor([[1.0, 2.0]])
    loss, st = core.value_loss(vpred, old, ret, torch.ones(1, 2), cliprange_value=0.2)
    # token 0: (2-1)^2=1 vs (1.2-1)^2=0.04 -> 1; token 1: (1.5-2)^2=0.25 vs (1.2-2)^2=0.64 -> 0.64 (clipped)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.64) / 2)
    assert st["clipfrac"].item() == pytest.approx(0.5)
    loss.backward()
    assert vpred.grad[0].tolist() == pytest.approx([0.5 * 2 * (2 - 1) / 2, 0.0])


def test_logprobs_and_entropy_from_logits():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert core.logprobs_from_logits(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))
    assert core.entropy_from_logits(logits).item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
