"""The DPO objective as a pure function of log-probabilities (Rafailov et al. 2023; IPO, Azar et al. 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_LOSSES = ("sigmoid", "ipo")


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    kind: str = "sigmoid",
) -> tuple[torch.Tensor, dict]:
    """Mean DPO (or IPO) loss over pairs, and diagnostics. All inputs (P,) sequence log-probs.

    stats: reward_accuracy (share of pairs whose implicit reward β(log π − log π_ref) ranks chosen
    above rejected), reward_margin (mean chosen − rejected reward), chosen_reward, rejected_reward.
    """
    chosen_reward = beta * (policy_chosen - ref_chosen)  # (P,)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    delta = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)  # (P,)
    if kind == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)
    elif kind == "ipo":
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"DPO loss kind must be one of {DPO_LOSSES}, got {kind!r}")
    with torch.no_grad():
        stats = torch.stack([
            (chosen_reward > rejected_reward).to(chosen_reward.dtype).mean(),
            (chosen_reward - rejected_reward).mean(),
            chosen_reward.mean(),
            rejected_reward.mean(),
        ]).tolist()  # one device sync for all four
    names = ("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward")
    return losses.mean(), dict(zip(names, stats))
