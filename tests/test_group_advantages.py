"""Critic-free advantages of group rollouts (k samples per prompt) against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from picochat.algos.ppo import (
    best_of_group_advantages,
    grpo_advantages,
    k3_kl_loss,
    rloo_advantages,
    sequence_to_token_advantages,
)


def test_rloo_with_two_samples_is_the_difference():
    assert rloo_advantages(torch.tensor([[1.0, 3.0], [5.0, 5.0]])).tolist() == [[-2.0, 2.0], [0.0, 0.0]]


def test_rloo_with_four_samples_subtracts_the_mean_of_the_other_three():
    adv = rloo_advantages(torch.tensor([[1.0, 2.0, 3.0, 6.0]]))
    # others' means: 11/3, 10/3, 9/3, 6/3
    assert torch.allclose(adv, torch.tensor([[1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0]]))
    assert abs(float(adv.sum())) < 1e-6  # leave-one-out advantages of a group sum to zero


def test_rloo_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(torch.tensor([[1.0], [2.0]]))


def test_grpo_uses_the_groups_mean_and_std():
    adv = grpo_advantages(torch.tensor([[1.0, 2.0, 3.0, 6.0], [2.0, 2.0, 2.0, 2.0]]), eps=0.0 + 1e-12)
    std = math.sqrt(14 / 3)  # deviations -2, -1, 0, 3; unbiased variance 14/3
    assert torch.allclose(adv[0], torch.tensor([-2 / std, -1 / std, 0.0, 3 / std]), atol=1e-6)
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # a group whose samples all score alike teaches nothing
    k2 = grpo_advantages(torch.tensor([[0.0, 1.0]]))
    assert torch.allclose(k2, torch.tensor([[-1 / math.sqrt(2), 1 / math.sqrt(2)]]), atol=1e-5)


def test_sequence_advantages_reach_every_response_token_and_no_padding():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    out = sequence_to_token_advantages(torch.tensor([2.0, -1.0]), mask)
    assert out.tolist() == [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]


def test_k3_kl_loss_is_the_masked_mean_of_the_k3_estimate():
    logprobs = torch.tensor([[-1.0, -2.0, -5.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is padding
    d = ref - logprobs  # log(ref/pi)
    expected = float(((d.exp() - d - 1) * mask).sum() / mask.sum())
    assert abs(float(k3_kl_loss(logprobs, ref, mask)) - expected) < 1e-6
    assert float(k3_kl_loss(ref, ref, mask)) == 0.0


def test_best_of_group_reinforces_only_each_prompts_best_answer():
    adv = best_of_group_advantages(torch.tensor([[0.1, 0.7, 0.3, 0.7], [-2.0, -1.0, -3.0, -5.0]]))
    assert adv.tolist() == [[0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]  # a tie goes to the first
