"""The PPO stage: optimise the SFT policy against the reward model with a KL penalty, then compare
it with its starting model on held-out prompts (the algorithm is picochat.train.ppo.PPOTrainer)."""

from __future__ import annotations

import time
from pathlib import Path

from picochat.config import PPOConfig, RunConfig
from picochat.core.chat import write_tokenizer_config
from picochat.core.checkpoint import write_model_dir
from picochat.core.io import atomic_write_text
from picochat.core.precision import measured_matmul_peak_flops
from picochat.core.tokenizer import EOT
from picochat.eval.kl import sampled_kl
from picochat.eval.policy_eval import compare_on_gold, world_test_examples
from picochat.eval.reward_eval import compare_rewards, evaluate_reward, reward_summary, samples_markdown
from picochat.layout import answer_cache_dir, stage_reference
from picochat.train.ppo import PPOTrainer


def run(cfg: RunConfig, out: Path, show_progress: bool = True) -> dict:
    return train_policy(cfg, out, PPOTrainer(cfg, out, show_progress), show_progress)


def train_policy(cfg: RunConfig, out: Path, trainer: PPOTrainer, show_progress: bool = True) -> dict:
    """Run PPO to the end (or resume it), write the policy to trainer.stage_dir, evaluate it
    against its reference and return the summary."""
    t0 = time.perf_counter()
    print(f"[ppo] {len(trainer.prompts):,} prompts ({cfg.ppo.format}"
          + (f", {len(trainer.eval_prompts):,} more held out" if trainer.eval_prompts else "")
          + (f", {trainer.n_prompts_too_long:,} too long skipped" if trainer.n_prompts_too_long else "")
          + (f", {len(trainer.problems):,} invalid skipped" if trainer.problems else "")
          + f"); {cfg.ppo.iterations} iterations x {cfg.ppo.rollout_prompts * trainer.world_size} prompts x "
          f"{cfg.ppo.samples_per_prompt} answers, {cfg.ppo.epochs} epochs; reward {cfg.ppo.reward}, advantage "
          f"{cfg.ppo.advantage}, kl_coef {cfg.ppo.kl_coef} ({'adaptive' if cfg.ppo.adaptive_kl else 'fixed'}, "
          f"in the {cfg.ppo.kl_penalty}); training {cfg.ppo.trainable} parameters ({trainer.n_trainable:,})")
    if not trainer.fit():
        raise KeyboardInterrupt
    if not trainer.is_main:  # under torchrun, rank 0 alone writes the policy and evaluates it
        return {}
    stage_dir = trainer.stage_dir
    write_model_dir(stage_dir, trainer.policy, trainer.tokenizer_file,
                    {"stage": "ppo", "iterations": trainer.iteration, "init": str(trainer.init_dir),
                     "reward": cfg.ppo.reward, "reward_model": str(trainer.rm_dir) if trainer.rm_dir else None})
    # A plain-text policy (format=text) is a base model: its generations end at <|endoftext|>.
    write_tokenizer_config(stage_dir, **({"eos_token": EOT} if cfg.ppo.format == "text" else {}))
    history = trainer.metrics.read()
    summary = {
        "stage": "ppo",
        "reward": cfg.ppo.reward,
        "advantage": cfg.ppo.advantage,
        "iterations": trainer.iteration,
        "final": history[-1] if history else {},
        "train_wall_s": sum(r["seconds"] for r in history),
        **_throughput(trainer, history),
    }
    summary.update(evaluate_policy(cfg, Path(out), trainer, "ppo", show_progress))
    summary["wall_s"] = time.perf_counter() - t0
    return summary


def _throughput(trainer: PPOTrainer, history: list[dict]) -> dict:
    """Tokens the policy and value updates trained on, per second of iteration time (sampling
    included), and the MFU of those updates: the rollout and scoring passes are not counted."""
    tokens = sum(r.get("train_tokens", 0.0) for r in history)
    wall = sum(r["seconds"] for r in history)
    if not tokens or wall <= 0:
        return {}
    pcfg = trainer.pcfg
    rows = pcfg.epochs * pcfg.rollout_prompts * pcfg.samples_per_prompt * trainer.world_size * len(history)
    seq = max(1, round(tokens / rows))  # mean tokens per row
    flops = tokens * sum(m.flops_per_token(seq) for m in trainer.trained_models())
    return {"tokens": int(tokens), "tokens_per_s": tokens / wall,
            "mfu": flops / wall / measured_matmul_peak_flops(trainer.precision, trainer.device.type)}


def evaluate_policy(cfg: RunConfig, out: Path, trainer: PPOTrainer, label: str, show_progress: bool) -> dict:
    """Held-out evaluation of the tuned policy next to its starting (SFT) model: gold score (greedy
    and T=1 samples; built-in world only), reward-model score of the samples before and after
    (mean, median, paired gain), KL to the reference, and the paired difference in gold score with
    a 95% CI."""
    pcfg = cfg.ppo
    baseline = stage_reference(pcfg.init, "sft") or "reference"
    if pcfg.eval_prompts <= 0:
        return {}
    if trainer.gold is None:
        return _evaluate_without_gold(trainer, pcfg, baseline, label) if trainer.eval_prompts else {}
    examples = world_test_examples(out, pcfg.eval_prompts)
    k = pcfg.eval_samples
    comparison = compare_on_gold(
        trainer.policy, trainer.reference, trainer.tokenizer, examples, trainer.gold, label=label, start_label="sft",
        precision=trainer.precision, max_new_tokens=pcfg.eval_max_new_tokens, n_samples=k, seed=pcfg.train.seed,
        show_progress=show_progress, samples_file=trainer.stage_dir / "samples.md", cache_dir=answer_cache_dir(out))
    after, before = comparison.after, comparison.before
    prompts = [e.prompt() for e in examples]

    def rm_scores(result: dict) -> list[float]:  # RM score of the T=1 samples evaluate_gold drew
        texts, finished = zip(*result["samples"])
        return trainer.reward_model.score(prompts * k, list(texts), list(finished))

    scored = "samples" in after and trainer.reward_model is not None  # reward=gold: no reward model
    rewards = compare_rewards(rm_scores(before), rm_scores(after), len(prompts)) if scored else None
    return {
        **comparison.summary(),
        "rm_score_sampled": rewards["after"]["mean"] if rewards else None,
        "rm_score_sft_sampled": rewards["before"]["mean"] if rewards else None,
        **(reward_summary(rewards, baseline) if rewards else {}),
        "kl": comparison.kl["mean"],
        "kl_stderr": comparison.kl["stderr"],
    }


def _evaluate_without_gold(trainer: PPOTrainer, pcfg: PPOConfig, baseline: str, label: str) -> dict:
    """Your own prompts (no gold scorer): reward-model score of T=1 samples of the policy and of
    its starting model on the held-out prompts, and the KL between them."""
    prompts = trainer.eval_prompts
    result = evaluate_reward(trainer.policy, trainer.reference, trainer.reward_model, trainer.tokenizer, prompts,
                             n_samples=pcfg.eval_samples, max_new_tokens=pcfg.max_new_tokens, seed=pcfg.train.seed,
                             precision=trainer.precision)
    kl = sampled_kl(trainer.policy, trainer.reference, trainer.tokenizer, prompts, trainer.precision,
                    n_samples=1, max_new_tokens=pcfg.max_new_tokens, seed=pcfg.train.seed)
    atomic_write_text(trainer.stage_dir / "samples.md", samples_markdown(result["examples"], baseline, label))
    for e in result["examples"][:4]:
        print(f"  prompt: {e['prompt']!r}\n  {baseline}: {e['before']!r} ({e['before_reward']:+.2f})\n"
              f"  {label}: {e['after']!r} ({e['after_reward']:+.2f})")
    return {
        **reward_summary(result, baseline),
        "reward_eval_prompts": len(prompts),
        "kl": kl["mean"],
        "kl_stderr": kl.get("stderr"),
        "kl_tokenwise": kl["mean_tokenwise"],
        "samples": result["examples"][:8],
    }
