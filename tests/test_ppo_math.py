"""PPO math against numbers computed by hand (in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from picochat.algos.ppo import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_penalty,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)
from picochat.core.rollout import logprobs_from_logits


def close(actual, expected, tol=1e-5):
    return torch.allclose(torch.as_tensor(actual, dtype=torch.float32), torch.as_tensor(expected, dtype=torch.float32),
                          atol=tol, rtol=0)


# ---------------------------------------------------------------- masked statistics

def test_masked_mean_and_var_use_valid_entries_only():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, float("nan"), 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    # valid: 1, 2, 3, 6 -> mean 12/4 = 3
    assert close(masked_mean(x, mask), 3.0)
    # per row: (1+2)/2 = 1.5, (3+6)/2 = 4.5
    assert close(masked_mean(x, mask, dim=1), [1.5, 4.5])
    # squared deviations from 3: 4, 1, 0, 9 -> sum 14; biased 14/4 = 3.5, unbiased 14/3
    assert close(masked_var(x, mask, unbiased=False), 3.5)
    assert close(masked_var(x, mask), 14 / 3)


def test_masked_whiten_over_valid_only():
    x = torch.tensor([[1.0, 2.0, 50.0], [3.0, 6.0, -7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    # mean 3, unbiased var 14/3, std = 2.1602469
    std = math.sqrt(14 / 3 + 1e-8)
    expected = torch.tensor([[-2 / std, -1 / std, 0.0], [0.0, 3 / std, 0.0]])
    out = masked_whiten(x, mask)
    assert close(out, expected)
    assert close(masked_mean(out, mask), 0.0) and close(masked_var(out, mask), 1.0, tol=1e-4)
    # shift_mean=False keeps the mean: (x - 3)/std + 3 on valid entries, 0 elsewhere
    assert close(masked_whiten(x, mask, shift_mean=False), (expected + 3.0) * mask)


# ---------------------------------------------------------------- KL estimators and rewards

def test_kl_estimators():
    lp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-2.0, -1.0])
    # d = lp - ref = [1, -1]
    assert close(kl_penalty(lp, ref, "k1"), [1.0, -1.0])
    assert close(kl_penalty(lp, ref, "abs"), [1.0, 1.0])
    assert close(kl_penalty(lp, ref, "mse"), [0.5, 0.5])
    # k3: r = exp(ref - lp) = [e^-1, e^1]; (r - 1) - log r
    #   d = 1:  0.3678794 - 1 + 1 = 0.3678794
    #   d = -1: 2.7182818 - 1 - 1 = 0.7182818
    assert close(kl_penalty(lp, ref, "k3"), [0.3678794, 0.7182818])
    assert close(kl_penalty(lp, lp, "k3"), [0.0, 0.0])  # identical policies: no KL
    with pytest.raises(ValueError, match="k1"):
        kl_penalty(lp, ref, "k2")


def test_token_rewards_put_score_on_last_valid_token():
    score = torch.tensor([1.0, 2.0])
    lp = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -5.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, kl = token_rewards(score, lp, ref, mask, kl_coef=0.1)
    # k1 = lp - ref: row 0 [0.5, 0, -0.5]; row 1 [1, 0, (masked)]
    assert close(kl, [[0.5, 0.0, -0.5], [1.0, 0.0, 0.0]])
    # -0.1*kl, score on the last valid token: row 0 t=2 -> 0.05 + 1; row 1 t=1 -> 0 + 2
    assert close(rewards, [[-0.05, 0.0, 1.05], [-0.1, 2.0, 0.0]])


# ---------------------------------------------------------------- GAE

def test_gae_hand_computed_with_padding():
    # gamma = 1, lam = 0.95. Row 0: three valid tokens. Row 1: two valid tokens, then padding
    # holding garbage that must not leak into the advantages.
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 1.0, 99.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.2, 0.4, -50.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # Row 0 (V after the end = 0):
    #   delta_2 = 1 + 0 - 0.7 = 0.3               A_2 = 0.3
    #   delta_1 = 0 + 0.7 - 0.6 = 0.1             A_1 = 0.1 + 0.95*0.3 = 0.385
    #   delta_0 = 0 + 0.6 - 0.5 = 0.1             A_0 = 0.1 + 0.95*0.385 = 0.46575
    # Row 1:
    #   delta_1 = 1 + 0 - 0.4 = 0.6               A_1 = 0.6
    #   delta_0 = 0.5 + 0.4 - 0.2 = 0.7           A_0 = 0.7 + 0.95*0.6 = 1.27
    assert close(adv, [[0.46575, 0.385, 0.3], [1.27, 0.6, 0.0]])
    # returns = A + V: [0.96575, 0.985, 1.0], [1.47, 1.0, 0]
    assert close(ret, [[0.96575, 0.985, 1.0], [1.47, 1.0, 0.0]])
    # gamma = 1 and lam = 1: A_t = sum of future rewards - V_t (Monte Carlo)
    adv1, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert close(adv1, [[0.5, 0.4, 0.3], [1.3, 0.6, 0.0]])


def test_gae_padding_values_do_not_matter():
    rewards = torch.tensor([[0.5, 1.0, 0.0, 0.0]])
    values = torch.tensor([[0.2, 0.4, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    adv2, ret2 = gae(torch.tensor([[0.5, 1.0, 7.0, float("nan")]]), torch.tensor([[0.2, 0.4, 3.0, float("inf")]]),
                     mask, gamma=0.9, lam=0.8)
    assert torch.equal(adv, adv2) and torch.equal(ret, ret2)


def test_gae_bootstraps_from_last_values():
    # One row cut off after two steps; V(state after) = 2. gamma = 0.5, lam = 1.
    #   delta_1 = 1 + 0.5*2 - 0.4 = 1.6           A_1 = 1.6
    #   delta_0 = 0 + 0.5*0.4 - 0.2 = 0.0         A_0 = 0 + 0.5*1.6 = 0.8
    adv, ret = gae(torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[0.2, 0.4, 9.0]]), torch.tensor([[1, 1, 0]]),
                   gamma=0.5, lam=1.0, last_values=torch.tensor([2.0]))
    assert close(adv, [[0.8, 1.6, 0.0]])
    assert close(ret, [[1.0, 2.0, 0.0]])


# ---------------------------------------------------------------- policy loss

def test_policy_loss_values_and_stats():
    old = torch.zeros(1, 3)
    lp = torch.log(torch.tensor([[1.1, 1.5, 0.5]]))  # ratios 1.1, 1.5, 0.5
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    mask = torch.ones(1, 3)
    loss, stats = policy_loss(lp, old, adv, mask, clip_range=0.2)
    # token 0: max(-1.1, -1.1) = -1.1
    # token 1: max(-1.5, -1.2) = -1.2       (clipped: no gain from pushing the ratio further up)
    # token 2: max(1.0, 1.6)   = 1.6        (ratio 0.5 clipped to 0.8: -(-2)*0.8 = 1.6)
    # mean = (-1.1 - 1.2 + 1.6)/3 = -0.2333333
    assert close(loss, -0.7 / 3)
    # clipfrac: |ratio - 1| > 0.2 for tokens 1 and 2 -> 2/3
    assert close(stats["clipfrac"], 2 / 3)
    # approx_kl = mean((r - 1) - log r):
    #   0.1 - 0.0953102 = 0.0046898; 0.5 - 0.4054651 = 0.0945349; -0.5 + 0.6931472 = 0.1931472
    #   mean = 0.2923719 / 3 = 0.0974573
    assert close(stats["approx_kl"], 0.0974573)
    # ratio mean 3.1/3 = 1.0333333; unbiased var: deviations 0.0666667, 0.4666667, -0.5333333
    #   squares 0.0044444 + 0.2177778 + 0.2844444 = 0.5066667, / 2 = 0.2533333
    assert close(stats["ratio_mean"], 3.1 / 3) and close(stats["ratio_var"], 0.2533333)


def test_policy_loss_gradient_is_zero_when_clipped():
    old = torch.zeros(2)
    mask = torch.ones(2)
    # ratio 1.5 > 1 + eps with A > 0, and ratio 0.5 < 1 - eps with A < 0: both clipped, no gradient
    lp = torch.log(torch.tensor([1.5, 0.5])).requires_grad_()
    loss, _ = policy_loss(lp, old, torch.tensor([1.0, -1.0]), mask)
    loss.backward()
    assert torch.equal(lp.grad, torch.zeros(2))
    # inside the clip range the gradient is -A * ratio / n = [-1.1/2, 0.9/2]
    lp = torch.log(torch.tensor([1.1, 0.9])).requires_grad_()
    loss, _ = policy_loss(lp, old, torch.tensor([1.0, -1.0]), mask)
    loss.backward()
    assert close(lp.grad, [-0.55, 0.45])
    # ratio 1.5 with A < 0 is NOT clipped (the pessimistic unclipped term wins): gradient -A*r/n
    lp = torch.log(torch.tensor([1.5, 1.0])).requires_grad_()
    loss, _ = policy_loss(lp, old, torch.tensor([-1.0, 0.0]), mask)
    loss.backward()
    assert close(lp.grad, [0.75, 0.0])


# ---------------------------------------------------------------- value loss

def test_value_loss_clipping():
    old = torch.tensor([0.0, 0.0, 0.0])
    values = torch.tensor([1.0, 0.1, -1.0], requires_grad=True)
    returns = torch.tensor([1.0, 1.0, 0.0])
    loss, stats = value_loss(values, old, returns, torch.ones(3), clip_range=0.2)
    # token 0: v=1 clipped to 0.2; (1-1)^2 = 0, (0.2-1)^2 = 0.64 -> 0.64 (clipped term wins)
    # token 1: v=0.1 inside;       (0.1-1)^2 = 0.81 both -> 0.81
    # token 2: v=-1 clipped to -0.2; (-1-0)^2 = 1, (-0.2-0)^2 = 0.04 -> 1 (unclipped wins)
    # loss = 0.5 * (0.64 + 0.81 + 1)/3 = 0.4083333
    assert close(loss, 0.5 * 2.45 / 3)
    assert close(stats["vf_clipfrac"], 1 / 3)
    assert close(stats["value_mean"], 0.1 / 3)
    loss.backward()
    # gradient: token 0 clipped -> 0; token 1: (0.1-1)/3 = -0.3; token 2: (-1-0)/3 = -0.3333333
    assert close(values.grad, [0.0, -0.3, -1 / 3])


# ---------------------------------------------------------------- masks change nothing

def test_masked_positions_change_no_loss():
    torch.manual_seed(0)
    B, T = 3, 5
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float32)
    lp, old, ref = torch.randn(B, T), torch.randn(B, T), torch.randn(B, T)
    adv, values, old_values, returns = torch.randn(B, T), torch.randn(B, T), torch.randn(B, T), torch.randn(B, T)
    garbage = lambda x: torch.where(mask.bool(), x, torch.full_like(x, 1e4))  # noqa: E731

    def everything(lp, old, ref, adv, values, old_values, returns):
        lp = lp.clone().requires_grad_()
        values = values.clone().requires_grad_()
        pl, ps = policy_loss(lp, old, adv, mask)
        vl, vs = value_loss(values, old_values, returns, mask)
        (pl + vl).backward()
        rewards, kl = token_rewards(torch.tensor([1.0, 2.0, 3.0]), lp.detach(), ref, mask, 0.1, "k3")
        a, r = gae(rewards, values.detach(), mask)
        return [pl, vl, rewards, kl, a, r, masked_whiten(adv, mask), lp.grad, values.grad,
                torch.tensor(list(ps.values()) + list(vs.values())),
                torch.tensor(explained_variance(values.detach(), returns, mask))]

    clean = everything(lp, old, ref, adv, values, old_values, returns)
    dirty = everything(garbage(lp), garbage(old), garbage(ref), garbage(adv), garbage(values), garbage(old_values),
                       garbage(returns))
    for a, b in zip(clean, dirty):
        assert torch.equal(a, b)
    assert torch.equal(clean[7] * (1 - mask), torch.zeros(B, T))  # no gradient to masked logprobs


# ---------------------------------------------------------------- logits helpers, explained variance

def test_logprobs_and_entropy_from_logits():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]]).to(torch.bfloat16)  # (1, 2, 2)
    tokens = torch.tensor([[1, 0]])
    lp = logprobs_from_logits(logits, tokens)
    # p = [1/2, 1/2] -> log 1/2 = -0.6931472; p = [3/4, 1/4] -> log 3/4 = -0.2876821
    assert lp.dtype == torch.float32
    assert close(lp, [[-0.6931472, -0.2876821]], tol=1e-2)  # bf16 logits
    # entropies: log 2 = 0.6931472; -(3/4 log 3/4 + 1/4 log 1/4) = 0.2157616 + 0.3465736 = 0.5623351
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])
    assert close(entropy_from_logits(logits, torch.tensor([[1, 1]])), (0.6931472 + 0.5623351) / 2)
    assert close(entropy_from_logits(logits, torch.tensor([[1, 0]])), 0.6931472)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert close(explained_variance(returns, returns, mask), 1.0)  # perfect critic
    assert close(explained_variance(torch.full((1, 4), 2.0), returns, mask), 0.0)  # constant = the mean
    # V = [1, 1, 1]: R - V = [0, 1, 2] has var 1, R has var 1 -> 0; V = 0: same variance as R -> 0
    # V = [2, 2, 4]: R - V = [-1, 0, -1], mean -2/3, var (1/9 + 4/9 + 1/9)/2 = 1/3 -> 1 - 1/3
    assert close(explained_variance(torch.tensor([[2.0, 2.0, 4.0, 0.0]]), returns, mask), 2 / 3)
    assert math.isnan(explained_variance(returns, torch.ones(1, 4), mask))


# ---------------------------------------------------------------- KL controllers

def test_adaptive_kl_controller():
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    ctl.update(current_kl=9.0, n_steps=1000)
    # error clip(9/6 - 1, -0.2, 0.2) = 0.2 -> 0.1 * (1 + 0.2*0.1) = 0.102
    assert ctl.value == pytest.approx(0.102)
    ctl.update(current_kl=5.4, n_steps=1000)
    # error 5.4/6 - 1 = -0.1 -> 0.102 * (1 - 0.01) = 0.10098
    assert ctl.value == pytest.approx(0.10098)
    ctl.update(current_kl=0.0, n_steps=10_000)
    # error clipped to -0.2 -> 0.10098 * 0.8 = 0.080784
    assert ctl.value == pytest.approx(0.080784)
    restored = AdaptiveKLController(1.0, 1.0, 1.0)
    restored.load_state_dict(ctl.state_dict())
    assert restored.state_dict() == ctl.state_dict()

    fixed = FixedKLController(0.05)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.05
    fixed.load_state_dict({"value": 0.2})
    assert fixed.value == 0.2 and fixed.state_dict() == {"value": 0.2}
