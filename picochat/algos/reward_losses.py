"""Reward-model losses as pure functions of scores, testable against hand-computed numbers.

All responses of one prompt sit in the same batch (one forward pass per response), and every
pair of them contributes: InstructGPT's observation is that the C(K,2) comparisons of one prompt
are strongly correlated, so treating them as separate examples overfits, while averaging them
per prompt in one step does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_loss(scores: torch.Tensor, winners: torch.Tensor, losers: torch.Tensor, pair_prompt: torch.Tensor,
                  n_prompts: int) -> torch.Tensor:
    """InstructGPT: mean over prompts of the mean over that prompt's pairs of −log σ(r_w − r_l).

    scores (N,) one per response; winners/losers (P,) row indices into scores; pair_prompt (P,)
    which prompt each pair belongs to (0..n_prompts-1).
    """
    per_pair = -F.logsigmoid(scores[winners] - scores[losers])  # (P,)
    per_prompt_sum = torch.zeros(n_prompts, dtype=per_pair.dtype, device=per_pair.device)
    per_prompt_sum = per_prompt_sum.index_add(0, pair_prompt, per_pair)
    pairs_per_prompt = torch.zeros(n_prompts, dtype=per_pair.dtype, device=per_pair.device).index_add(
        0, pair_prompt, torch.ones_like(per_pair))
    has_pairs = pairs_per_prompt > 0
    return (per_prompt_sum[has_pairs] / pairs_per_prompt[has_pairs]).mean()


def best_of_k_loss(scores: torch.Tensor, row_prompt: torch.Tensor, is_best: torch.Tensor,
                   n_prompts: int) -> torch.Tensor:
    """Ziegler et al. (2019): softmax over the K responses of a prompt, cross entropy with the
    best one(s) (tied best responses share the target mass). Mean over prompts.

    scores (N,), row_prompt (N,) prompt of each row, is_best (N,) bool.
    """
    losses = []
    for p in range(n_prompts):
        rows = row_prompt == p
        best = is_best[rows]
        if best.all() or not best.any():
            continue  # all tied: nothing to learn from this prompt
        log_probs = torch.log_softmax(scores[rows], dim=0)
        losses.append(-(log_probs[best]).mean())
    if not losses:
        return scores.sum() * 0.0
    return torch.stack(losses).mean()


def plackett_luce_loss(scores: torch.Tensor, row_prompt: torch.Tensor, rank_group: torch.Tensor,
                       n_prompts: int) -> torch.Tensor:
    """The listwise likelihood of a K-wise ranking (Plackett–Luce; Zhu et al. 2023): the best answer
    is chosen from all K with softmax probability, the next from the rest, and so on. Mean over
    prompts of the mean over their choices of −[s_i − log Σ_{j not yet chosen} exp(s_j)].

    scores (N,), row_prompt (N,), rank_group (N,) the place of each row's group in its ranking (0 =
    best). Tied answers are each chosen from the same remaining set (Breslow's handling of ties).
    A choice from a single remaining answer says nothing and is not counted, so at K = 2 this is
    exactly −log σ(r_w − r_l), the pairwise loss; prompts whose answers all tied are skipped."""
    losses = []
    for p in range(n_prompts):
        rows = row_prompt == p
        s, g = scores[rows], rank_group[rows]
        terms = [-(s[g == group] - torch.logsumexp(s[g >= group], dim=0))
                 for group in g.unique().tolist() if int((g >= group).sum()) > 1]
        if len(g.unique()) < 2 or not terms:
            continue
        losses.append(torch.cat(terms).mean())
    if not losses:
        return scores.sum() * 0.0
    return torch.stack(losses).mean()


def scalar_loss(scores: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Regression on scalar labels: 'mse', or 'bce' with labels in [0, 1] (scores are logits)."""
    if kind == "mse":
        return F.mse_loss(scores, labels)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(scores, labels)
    raise ValueError(f"unknown scalar loss {kind!r}; expected mse or bce")
