"""A tuned policy next to the model it started from, on the built-in world's held-out prompts.

PPO and DPO end the same way: both models answer the same held-out prompts (greedy, and
`n_samples` samples at temperature 1 with the same seeds), the gold scorer judges every answer,
and the paired per-prompt differences say whether tuning helped, with a 95% CI. The KL from the
starting model to the policy is sampled on the same prompts. The stages' `eval_prompts`,
`eval_samples` and `eval_max_new_tokens` settings are the arguments here.

The summary keys name the starting model `sft` (`gold_score_sft`, `gold_sft`): PPO introduced
them, and the report reads them for DPO too. For both stages that model is the one the policy
started from and is held to by the KL (`ppo.init` / `dpo.init`; by default the SFT model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from picochat.core.io import atomic_write_text
from picochat.core.model import GPT
from picochat.core.tokenizer import Tokenizer
from picochat.eval.gold_eval import evaluate_gold, gold_gains, gold_summary, held_out_subset
from picochat.eval.kl import sampled_kl
from picochat.world import ChatExample, GoldScorer, read_chat_examples


def world_test_examples(out: Path, n: int) -> list[ChatExample]:
    """`n` of the world's held-out chat prompts (`<out>/world/chat_test.jsonl`), spread over tasks."""
    return held_out_subset(read_chat_examples(Path(out) / "world" / "chat_test.jsonl"), n)


@dataclass
class GoldComparison:
    after: dict  # evaluate_gold result of the tuned policy
    before: dict  # evaluate_gold result of its starting model, same prompts and seeds
    kl: dict  # sampled_kl(policy || starting model) on the same prompts
    n_samples: int  # T=1 samples per prompt in both results

    def summary(self) -> dict:
        """The summary.json keys PPO and DPO share (the KL's are the stage's to choose)."""
        after, before, k = self.after, self.before, self.n_samples
        return {
            "gold_score": after["greedy"],
            "gold_score_sampled": after.get("sampled"),
            f"gold_score_best_of_{k}": after.get(f"best_of_{k}"),
            "gold_score_sft": before["greedy"],  # the starting model (see the module docstring)
            "gold_score_sft_sampled": before.get("sampled"),
            **gold_gains(after, before),
            "gold": gold_summary(after),
            "gold_sft": gold_summary(before),
        }


def compare_on_gold(
    policy: GPT,
    start: GPT,
    tokenizer: Tokenizer,
    examples: list[ChatExample],
    scorer: GoldScorer,
    *,
    label: str,
    start_label: str,
    precision: str,
    max_new_tokens: int,
    n_samples: int,
    seed: int,
    kl_samples: int = 1,
    show_progress: bool = False,
    samples_file: Path | None = None,
    cache_dir: Path | None = None,
) -> GoldComparison:
    """Gold scores of `policy` and of the model it started from on `examples`, the KL between
    them, and (when `samples_file` is given) their greedy answers side by side in markdown.
    cache_dir: answers either model gave before with these settings are read from there
    (`evaluate_gold`): the starting model's, when an earlier stage evaluated it the same way."""
    kwargs = dict(precision=precision, max_new_tokens=max_new_tokens, n_samples=n_samples, seed=seed,
                  show_progress=show_progress, cache_dir=cache_dir)
    after = evaluate_gold(policy, tokenizer, examples, scorer, label=label, **kwargs)
    before = evaluate_gold(start, tokenizer, examples, scorer, label=start_label, **kwargs)
    if samples_file is not None:
        atomic_write_text(samples_file, gold_samples_markdown(after, before, label, start_label))
    kl = sampled_kl(policy, start, tokenizer, [e.prompt() for e in examples], precision, n_samples=kl_samples,
                    max_new_tokens=max_new_tokens, seed=seed)
    return GoldComparison(after, before, kl, n_samples)


def gold_samples_markdown(after: dict, before: dict, label: str, start_label: str, n: int = 12) -> str:
    """The first `n` held-out prompts with both models' greedy answers and their gold scores."""
    lines = [f"# {label.upper()} and its starting model ({start_label}) on held-out prompts (greedy)\n"]
    for a, b in list(zip(after["examples"], before["examples"]))[:n]:
        lines.append(f"## [{a['task']}/{a['lang']}] {a['prompt']}\n\n- **{label}** (gold {a['score']:.2f}): "
                     f"{a['answer']}\n- **{start_label}** (gold {b['score']:.2f}): {b['answer']}\n")
    return "\n".join(lines)


def kl_summary(kl: dict) -> dict:
    """The summary.json keys of a sampled_kl result."""
    return {
        "kl": kl["mean"],  # per response, nats: E_{y~pi} sum_t log pi(y_t) - log pi_ref(y_t)
        "kl_stderr": kl["stderr"],
        "kl_tokenwise": kl["mean_tokenwise"],  # same quantity, lower-variance estimator
        "kl_tokenwise_stderr": kl["stderr_tokenwise"],
        "kl_prompts": kl["n_prompts"],
        "response_tokens": kl["mean_response_tokens"],
        "finished_rate": kl["finished_rate"],
    }
