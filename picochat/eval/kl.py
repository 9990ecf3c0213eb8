"""How far a tuned policy has moved from its reference: log-probabilities of responses and the KL.

DPO and PPO both optimise reward while paying for distance from the SFT model, measured as

    KL(π || π_ref) = E_{y ~ π(·|x)} [ Σ_t log π(y_t | x, y_<t) − log π_ref(y_t | x, y_<t) ]

over whole responses. `sampled_kl` estimates it on held-out prompts by sampling y from the policy
at temperature 1 and averaging that sum (an unbiased estimate, reported with its standard error
over prompts). It also reports the lower-variance token-level form, which replaces each sampled
term by the exact KL of the two next-token distributions at that position,
Σ_t Σ_v π(v|s_t) (log π(v|s_t) − log π_ref(v|s_t)); both estimate the same quantity.

Responses are scored exactly as they were sampled (the ids, never decoded and re-encoded text),
including the `<|im_end|>` that ended them, since that choice is part of the response.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import torch
import torch.nn.functional as F

from picochat.core.batching import right_pad
from picochat.core.generate import SamplingConfig, generate
from picochat.core.precision import autocast
from picochat.core.prompt import Prompt, encode_prompt, end_token_id
from picochat.core.tokenizer import Tokenizer


def sequence_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Σ log p(token) over the masked tokens of each row, in fp32: (N,).

    input_ids (N, T) whole sequences (prompt + response, right-padded); loss_mask (N, T) aligned
    with input_ids, 1 where the token is part of the response. Token t is predicted from the
    logits at t − 1, so position 0 is never scored. Right padding needs no attention mask: causal
    attention never lets a real token see the pads after it, and pads carry mask 0.
    """
    logits = model(input_ids[:, :-1]).float()  # (N, T-1, V)
    targets = input_ids[:, 1:]  # (N, T-1)
    token_logps = logits.gather(-1, targets[..., None]).squeeze(-1) - logits.logsumexp(-1)  # (N, T-1)
    return (token_logps * loss_mask[:, 1:].to(token_logps.dtype)).sum(-1)  # (N,)


@torch.no_grad()
def _log_ratio_sums(policy, reference, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: Σ_t (log π − log π_ref)(y_t) over response tokens, and Σ_t KL(π_t || π_ref_t)."""
    targets, m = ids[:, 1:], mask[:, 1:].float()  # (N, T-1)
    logp = F.log_softmax(policy(ids[:, :-1]).float(), dim=-1)  # (N, T-1, V)
    logq = F.log_softmax(reference(ids[:, :-1]).float(), dim=-1)
    sampled = (logp - logq).gather(-1, targets[..., None]).squeeze(-1)  # (N, T-1)
    exact = (logp.exp() * (logp - logq)).sum(-1)  # (N, T-1)
    return (sampled * m).sum(-1), (exact * m).sum(-1)


def _mean_and_stderr(per_prompt: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(per_prompt)
    se = statistics.stdev(per_prompt) / math.sqrt(len(per_prompt)) if len(per_prompt) > 1 else float("nan")
    return mean, se


def sampled_kl(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    tokenizer: Tokenizer,
    prompts: list[Prompt],
    precision: str,
    n_samples: int = 4,
    max_new_tokens: int = 96,
    seed: int = 0,
    batch_size: int = 32,
) -> dict:
    """KL(policy || reference) per response on `prompts` (message lists ending with a user turn,
    or plain-text openings, which are continued up to <|endoftext|>).

    Returns {"mean", "stderr"} (the sampled estimate: mean over prompts of the mean over their
    `n_samples` samples, and its standard error over prompts), {"mean_tokenwise",
    "stderr_tokenwise"} (the exact-per-token form), plus "n_prompts", "n_samples",
    "mean_response_tokens" and "finished_rate" (share of samples that ended with <|im_end|>).
    """
    if not prompts:
        raise ValueError("sampled_kl needs at least one prompt")
    device = next(policy.parameters()).device
    prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]
    end_id = end_token_id(tokenizer, prompts[0])
    max_len = policy.cfg.max_seq_len
    max_new = min(max_new_tokens, max_len - max(len(p) for p in prompt_ids))
    if max_new < 1:
        raise ValueError(f"a KL prompt is {max(len(p) for p in prompt_ids)} tokens, no room to answer "
                         f"within max_seq_len={max_len}")
    # Only the end token (<|im_end|>, or <|endoftext|> for text) stops: a finished response then
    # provably ends with it, so the scored ids are exactly the sampled ones.
    sampling = SamplingConfig(max_new_tokens=max_new, temperature=1.0, stop_ids=(end_id,))

    rows, masks, owner = [], [], []  # one row per (sample, prompt)
    n_finished, n_response_tokens = 0, 0
    policy.eval()
    jobs = [(k, i) for k in range(n_samples) for i in range(len(prompts))]
    jobs.sort(key=lambda job: len(prompt_ids[job[1]]))  # similar lengths together: less padding
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        batch_sampling = SamplingConfig(**{**sampling.__dict__, "seed": seed + start})
        with torch.no_grad(), autocast(precision, device):
            results = generate(policy, [prompt_ids[i] for _, i in chunk], batch_sampling, pad_id=tokenizer.pad_id)
        for (_, i), r in zip(chunk, results):
            response = r.tokens + ([end_id] if r.finish_reason == "stop" else [])
            n_finished += r.finish_reason == "stop"
            n_response_tokens += len(response)
            rows.append(np.asarray(prompt_ids[i] + response, dtype=np.int64))
            masks.append(np.asarray([0] * len(prompt_ids[i]) + [1] * len(response), dtype=np.bool_))
            owner.append(i)

    sampled_sum, exact_sum = np.zeros(len(prompts)), np.zeros(len(prompts))
    for start in range(0, len(rows), batch_size):
        ids = right_pad(rows[start : start + batch_size], tokenizer.pad_id)  # (N, T)
        mask = right_pad(masks[start : start + batch_size], False, np.bool_)  # (N, T)
        with autocast(precision, device):
            s, e = _log_ratio_sums(policy, reference, ids.to(device), mask.to(device))
        np.add.at(sampled_sum, owner[start : start + batch_size], s.cpu().numpy())
        np.add.at(exact_sum, owner[start : start + batch_size], e.cpu().numpy())
    mean, se = _mean_and_stderr((sampled_sum / n_samples).tolist())
    mean_tw, se_tw = _mean_and_stderr((exact_sum / n_samples).tolist())
    return {
        "mean": mean,
        "stderr": se,
        "mean_tokenwise": mean_tw,
        "stderr_tokenwise": se_tw,
        "n_prompts": len(prompts),
        "n_samples": n_samples,
        "mean_response_tokens": n_response_tokens / len(rows),
        "finished_rate": n_finished / len(rows),
    }
