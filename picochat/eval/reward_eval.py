"""Before/after in reward-model score: the tuned policy and its starting model answer the same
held-out prompts with the same sampling seeds, and the reward model scores every answer.

This is the table of the classic RLHF write-ups (e.g. "make movie-review continuations positive":
mean and median reward of the reference model's samples next to the tuned model's), and the only
measure there is when no gold scorer exists (your own prompts, real data). Samples are drawn at
temperature 1, the distribution PPO optimises.
"""

from __future__ import annotations

import statistics

from picochat.core.prompt import Prompt, reward_input
from picochat.core.rollout import sample_rollout
from picochat.core.tokenizer import Tokenizer
from picochat.eval.gold_eval import paired_difference
from picochat.reward_model import AnyRewardModel


def reward_stats(scores: list[float]) -> dict:
    return {"mean": statistics.fmean(scores), "median": statistics.median(scores),
            "std": statistics.pstdev(scores), "n": len(scores)}


def sample_and_score(model, reward: AnyRewardModel, tokenizer: Tokenizer, prompts: list[Prompt], *, n_samples: int,
                     max_new_tokens: int, seed: int, precision: str,
                     batch_size: int = 64) -> tuple[list[str], list[float]]:
    """(texts, reward scores) of `n_samples` T=1 samples per prompt, ordered sample-major
    (all prompts for sample 0, then sample 1, ...). Seeds depend on (seed, sample, batch) only,
    so two models given the same arguments draw from the same random numbers."""
    texts: list[str] = []
    scores: list[float] = []
    for k in range(n_samples):
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            ro = sample_rollout(model, tokenizer, chunk, max_new_tokens, temperature=1.0,
                                seed=seed + 1_000_003 * k + start, precision=precision)
            inputs = [reward_input(p, t) for p, t in zip(chunk, ro.texts)]
            scores += reward.score([p for p, _ in inputs], [r for _, r in inputs], ro.finished.tolist())
            texts += ro.texts
    return texts, scores


def evaluate_reward(policy, reference, reward: AnyRewardModel, tokenizer: Tokenizer, prompts: list[Prompt], *,
                    n_samples: int, max_new_tokens: int, seed: int, precision: str) -> dict:
    """Reward of the reference's and the policy's samples on `prompts`: statistics of each, the
    paired per-prompt gain with a 95% CI, and the first sample of each prompt for reading."""
    kwargs = dict(n_samples=n_samples, max_new_tokens=max_new_tokens, seed=seed, precision=precision)
    before_texts, before = sample_and_score(reference, reward, tokenizer, prompts, **kwargs)
    after_texts, after = sample_and_score(policy, reward, tokenizer, prompts, **kwargs)
    examples = [{"prompt": p if isinstance(p, str) else p[-1]["content"], "before": before_texts[i],
                 "before_reward": before[i], "after": after_texts[i], "after_reward": after[i]}
                for i, p in enumerate(prompts)]
    return {**compare_rewards(before, after, len(prompts)), "examples": examples}


def compare_rewards(before: list[float], after: list[float], n_prompts: int) -> dict:
    """Statistics of both score lists (sample-major over `n_prompts` prompts) and the paired gain
    of the per-prompt means."""
    def per_prompt(scores: list[float]) -> list[float]:
        return [statistics.fmean(scores[i::n_prompts]) for i in range(n_prompts)]

    return {"before": reward_stats(before), "after": reward_stats(after),
            "gain": paired_difference(per_prompt(after), per_prompt(before))}


def reward_summary(comparison: dict, baseline: str) -> dict:
    """The flat summary.json keys of a before/after comparison, for tables that span stages:
    reward_{before,after}_{mean,median,std}, reward_gain {mean, ci95, n} and the baseline's name."""
    out = {"baseline": baseline}
    for when in ("before", "after"):
        for stat in ("mean", "median", "std"):
            out[f"reward_{when}_{stat}"] = comparison[when][stat]
    out["reward_gain"] = comparison["gain"]
    out["reward_eval_samples"] = comparison["before"]["n"]
    return out


def samples_markdown(examples: list[dict], baseline: str, label: str, n: int = 12) -> str:
    lines = [f"# {label.upper()} vs {baseline} on held-out prompts (one T=1 sample each, reward-model score)\n"]
    for e in examples[:n]:
        lines.append(f"## {e['prompt']}\n\n- **{baseline}** ({e['before_reward']:+.2f}): {e['before']}\n"
                     f"- **{label}** ({e['after_reward']:+.2f}): {e['after']}\n")
    return "\n".join(lines)
