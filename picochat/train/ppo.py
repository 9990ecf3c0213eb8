"""RLHF with PPO (`picochat ppo`): optimise the SFT policy against the reward model, on a KL leash.

One iteration, InstructGPT-style:
  1. rollout: sample a response to each of a batch of prompts from the policy (KV-cache sampler);
  2. score: reward-model score of each (normalised as stored in the RM checkpoint), minus a
     penalty for responses that never end; per-token reward = −β·KL(policy‖SFT) on every token
     plus the score on the last one;
  3. advantages: values from the value model (initialised from the reward model), GAE;
  4. update: several epochs over shuffled minibatches of the clipped policy loss and clipped
     value loss (+ optional PPO-ptx pretraining loss), with gradient accumulation and clipping.
Four models: policy (trained), value (trained), reference = SFT (frozen), reward (frozen); none
has dropout. Everything random derives from (seed, iteration), and the checkpoint holds both
trained models, the optimizer and the KL controller, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model
from tqdm.auto import tqdm

from picochat.chat import write_tokenizer_config
from picochat.checkpoint import load_model_dir, write_model_dir
from picochat.config import PPOConfig, RunConfig
from picochat.io import MetricsLog, atomic_write_text, resolve_swapped_directory, swap_in_directory
from picochat.reward import RewardModel
from picochat.tokenizer import Tokenizer
from picochat.train.ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    explained_variance,
    gae,
    masked_mean,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)
from picochat.train.precision import autocast, default_device, resolve_precision
from picochat.train.rollout import Rollout, response_logits, response_logprobs, sample_rollout
from picochat.train.trainer import GracefulInterrupt, build_optimizer


def load_prompt_pool(cfg: RunConfig, out: Path) -> list[list[dict]]:
    """Prompts to optimise on: the world's training prompts, or the prompts of your own files
    (chat JSONL: everything before the last assistant turn; preference JSONL: the prompt)."""
    pcfg = cfg.ppo
    pool: dict[str, list[dict]] = {}
    if not pcfg.prompts:
        from picochat.world import read_chat_examples

        for e in read_chat_examples(out / "world" / "chat_train.jsonl"):
            pool.setdefault(repr(e.prompt()), e.prompt())
    else:
        from picochat.data.preferences import read_preferences

        records, _ = read_preferences(pcfg.prompts, skip_invalid=True)
        for r in records:
            if r.prompt is not None:
                pool.setdefault(repr(r.prompt), r.prompt)
    if not pool:
        raise ValueError("no prompts for PPO")
    return list(pool.values())


def kl_controller(pcfg: PPOConfig):
    if pcfg.adaptive_kl:
        return AdaptiveKLController(pcfg.kl_coef, pcfg.kl_target, pcfg.kl_horizon)
    return FixedKLController(pcfg.kl_coef)


class PPOTrainer:
    def __init__(self, cfg: RunConfig, out: Path, show_progress: bool = True):
        self.cfg, self.pcfg, self.out = cfg, cfg.ppo, Path(out)
        self.stage_dir = self.out / "ppo"
        self.show_progress = show_progress
        self.device = default_device()
        self.precision = resolve_precision(self.pcfg.precision, self.device)
        init = Path(self.pcfg.init) if self.pcfg.init else self.out / "sft"
        rm_dir = Path(self.pcfg.reward_model) if self.pcfg.reward_model else self.out / "rm"
        self.policy, meta = load_model_dir(init, self.device)
        self.tokenizer_file = Path(meta["model_dir"]) / "tokenizer.json"
        self.tokenizer = Tokenizer.load(self.tokenizer_file)
        self.reference, _ = load_model_dir(init, self.device)
        self.reward = RewardModel.load(rm_dir, self.device)
        self.value, _ = load_model_dir(Path(self.pcfg.value_init) if self.pcfg.value_init else rm_dir, self.device)
        for frozen in (self.reference, self.reward.model):
            frozen.requires_grad_(False).eval()
        self.init_dir, self.rm_dir = init, rm_dir
        tcfg = self.pcfg.train
        self.optimizer = build_optimizer(torch.nn.ModuleList([self.policy, self.value]), tcfg, self.device)
        self.kl_ctl = kl_controller(self.pcfg)
        self.prompts = load_prompt_pool(cfg, self.out)
        self.metrics = MetricsLog(self.stage_dir / "metrics.jsonl")
        self.iteration = 0
        self.ptx_tokens = None
        if self.pcfg.ptx_coef > 0:
            from picochat.data.shards import load_shards

            ptx_dir = Path(self.pcfg.ptx_data) if self.pcfg.ptx_data else self.out / "pretrain" / "data"
            self.ptx_tokens = load_shards(ptx_dir)[0]
        self.gold = None
        world = self.out / "world" / "world.json"
        if world.exists() and not self.pcfg.prompts:
            from picochat.world import GoldScorer, read_world

            self.gold = GoldScorer(read_world(world)[0])

    # -- checkpoints -------------------------------------------------------------------------

    def save(self) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.", dir=self.stage_dir))
        try:
            write_model_dir(tmp, self.policy, self.tokenizer_file, {"stage": "ppo", "iteration": self.iteration})
            (tmp / "value").mkdir()
            write_model_dir(tmp / "value", self.value, self.tokenizer_file, {"stage": "ppo-value"})
            torch.save({"iteration": self.iteration, "optimizer": self.optimizer.state_dict(),
                        "kl_ctl": self.kl_ctl.state_dict(), "torch_rng": torch.get_rng_state()},
                       tmp / "trainer_state.pt")
            swap_in_directory(tmp, self.stage_dir / "checkpoint")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def try_resume(self) -> bool:
        ckpt = resolve_swapped_directory(self.stage_dir / "checkpoint")
        if ckpt is None or not (ckpt / "trainer_state.pt").exists():
            return False
        state = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=True)
        load_model(self.policy, str(ckpt / "model.safetensors"), strict=True)
        load_model(self.value, str(ckpt / "value" / "model.safetensors"), strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        torch.set_rng_state(state["torch_rng"])
        self.iteration = int(state["iteration"])
        self.metrics.truncate_after(self.iteration)
        return True

    # -- one iteration -----------------------------------------------------------------------

    def _prompt_batch(self) -> list[list[dict]]:
        rng = np.random.default_rng([self.pcfg.train.seed, self.iteration])
        idx = rng.choice(len(self.prompts), size=min(self.pcfg.rollout_prompts, len(self.prompts)), replace=False)
        return [self.prompts[i] for i in idx]

    @torch.no_grad()
    def _score(self, ro: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores used as reward (B,), raw normalised RM scores (B,))."""
        rm_scores = torch.tensor(self.reward.score(ro.prompts, ro.texts, ro.finished.tolist()))
        scores = rm_scores + (~ro.finished).float() * self.pcfg.no_eos_penalty
        return scores, rm_scores

    @torch.no_grad()
    def _old_values_and_logprobs(self, ro: Rollout):
        ids, attn = ro.input_ids.to(self.device), ro.attention_mask.to(self.device)
        with autocast(self.precision, self.device):
            self.policy.eval()
            logprobs, _ = response_logprobs(self.policy, ids, attn, ro.prompt_width, self.pcfg.temperature)
            ref_logprobs, _ = response_logprobs(self.reference, ids, attn, ro.prompt_width, self.pcfg.temperature)
            values = response_logits(self.value, ids, attn, ro.prompt_width).float()
        return logprobs, ref_logprobs, values

    def _ptx_loss(self, step_seed: list[int]) -> torch.Tensor:
        from picochat.model import lm_loss
        from picochat.train.pretrain import random_windows

        seq = min(self.cfg.pretrain.seq_len, self.policy.cfg.max_seq_len)
        b = random_windows(self.ptx_tokens, seq, self.pcfg.ptx_batch_size, step_seed[0], step_seed[1], step_seed[2])
        return lm_loss(self.policy(b["input_ids"].to(self.device)), b["targets"].to(self.device))

    def iterate(self) -> dict:
        pcfg = self.pcfg
        seed = pcfg.train.seed
        t0 = time.perf_counter()
        prompts = self._prompt_batch()
        ro = sample_rollout(self.policy, self.tokenizer, prompts, pcfg.max_new_tokens, pcfg.temperature,
                            seed=seed * 100_003 + self.iteration, precision=self.precision)
        t_rollout = time.perf_counter() - t0
        scores, rm_scores = self._score(ro)
        old_logprobs, ref_logprobs, old_values = self._old_values_and_logprobs(ro)
        mask = ro.response_mask.to(self.device)
        rewards, kl = token_rewards(scores.to(self.device), old_logprobs, ref_logprobs, mask, self.kl_ctl.value,
                                    kind=pcfg.kl_estimator)
        if pcfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, old_values, mask, gamma=pcfg.gamma, lam=pcfg.lam)
        advantages = masked_whiten(advantages, mask)
        t1 = time.perf_counter()

        stats: dict[str, list[float]] = {}
        B = ro.input_ids.shape[0]
        mb = pcfg.minibatch_size
        micro = max(1, mb // pcfg.train.grad_accum_steps)
        self.policy.train()
        self.value.train()
        for epoch in range(pcfg.epochs):
            order = np.random.default_rng([seed, self.iteration, epoch]).permutation(B)
            for start in range(0, B, mb):
                rows = order[start : start + mb]
                for g in self.optimizer.param_groups:
                    g["lr"] = self._lr()
                for m_start in range(0, len(rows), micro):
                    r = torch.as_tensor(rows[m_start : m_start + micro], device=self.device)
                    weight = len(r) / len(rows)
                    loss, s = self._minibatch_loss(ro, r, old_logprobs, old_values, advantages, returns, mask)
                    if self.ptx_tokens is not None:
                        ptx = self._ptx_loss([seed, self.iteration, epoch * 10_000 + start + m_start])
                        loss = loss + pcfg.ptx_coef * ptx
                        s["ptx_loss"] = ptx.item()
                    (loss * weight).backward()
                    for k, v in s.items():
                        stats.setdefault(k, []).append(v)
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    [p for m in (self.policy, self.value) for p in m.parameters()], pcfg.train.grad_clip)
                stats.setdefault("grad_norm", []).append(float(grad_norm))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        t2 = time.perf_counter()

        seq_kl = (kl * mask).sum(1)  # (B,) sequence KL estimate of this rollout
        mean_kl = float(seq_kl.mean())
        self.kl_ctl.update(mean_kl, B)
        record = {
            "iteration": self.iteration + 1,
            "step": self.iteration + 1,
            "rm_score": float(rm_scores.mean()),
            "reward": float(scores.mean()),
            "kl": mean_kl,
            "kl_coef": self.kl_ctl.value,
            "response_length": float(mask.sum(1).mean()),
            "eos_rate": float(ro.finished.float().mean()),
            "explained_variance": explained_variance(old_values, returns, mask),
            "advantage_mean_raw": float(masked_mean(returns - old_values, mask)),
            **{k: statistics.fmean(v) for k, v in stats.items()},
            "rollout_tokens_per_s": float(mask.sum()) / max(1e-9, t_rollout),
            "train_tokens_per_s": pcfg.epochs * float(ro.attention_mask.sum()) / max(1e-9, t2 - t1),
            "seconds": t2 - t0,
        }
        if self.gold is not None:
            record["gold_score"] = statistics.fmean(
                self.gold.score(p, t, finished=bool(f)) for p, t, f in zip(ro.prompts, ro.texts, ro.finished))
        self.iteration += 1
        return record

    def _lr(self) -> float:
        tcfg = self.pcfg.train
        warm = min(tcfg.lr_warmup_steps, self.pcfg.iterations)
        if self.iteration < warm:
            return tcfg.lr * (self.iteration + 1) / warm
        return tcfg.lr

    def _minibatch_loss(self, ro, r, old_logprobs, old_values, advantages, returns, mask):
        ids = ro.input_ids.to(self.device)[r]
        attn = ro.attention_mask.to(self.device)[r]
        m = mask[r]
        with autocast(self.precision, self.device):
            logprobs, logits = response_logprobs(self.policy, ids, attn, ro.prompt_width, self.pcfg.temperature)
            values = response_logits(self.value, ids, attn, ro.prompt_width).float()
        pg_loss, pg_stats = policy_loss(logprobs, old_logprobs[r], advantages[r], m, self.pcfg.clip_range)
        vf_loss, vf_stats = value_loss(values, old_values[r], returns[r], m, self.pcfg.vf_clip_range)
        loss = pg_loss + self.pcfg.vf_coef * vf_loss
        ent = entropy_from_logits(logits.detach(), m)
        if self.pcfg.entropy_coef:
            loss = loss - self.pcfg.entropy_coef * entropy_from_logits(logits, m)
        stats = {"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(), "entropy": float(ent),
                 **{k: float(v) for k, v in {**pg_stats, **vf_stats}.items()}}
        return loss, stats

    # -- the loop ----------------------------------------------------------------------------

    def fit(self) -> bool:
        """Run the remaining iterations; returns False if interrupted (checkpoint saved)."""
        pcfg = self.pcfg
        torch.manual_seed(pcfg.train.seed)
        if self.try_resume():
            tqdm.write(f"[ppo] resuming from iteration {self.iteration} (checkpoint in {self.stage_dir})")
        bar = tqdm(total=pcfg.iterations, initial=self.iteration, desc="ppo", unit="iter",
                   disable=not self.show_progress, dynamic_ncols=True)
        stop = GracefulInterrupt()
        try:
            while self.iteration < pcfg.iterations and not stop.requested:
                record = self.iterate()
                self.metrics.write(record)
                bar.update(1)
                if self.iteration % pcfg.train.log_every == 0 or self.iteration == pcfg.iterations:
                    bar.write(" | ".join([f"iter {self.iteration:>4}"] + [
                        f"{k} {record[k]:.3g}" for k in ("rm_score", "gold_score", "kl", "kl_coef", "entropy",
                                                          "response_length", "eos_rate", "approx_kl", "clipfrac",
                                                          "explained_variance") if k in record]))
                if (pcfg.train.ckpt_every and self.iteration % pcfg.train.ckpt_every == 0) \
                        or self.iteration == pcfg.iterations or stop.requested:
                    self.save()
        finally:
            stop.restore()
            bar.close()
        if stop.requested:
            tqdm.write(f"[ppo] interrupted at iteration {self.iteration}: checkpoint saved; rerun to resume")
            return False
        return True


def run_ppo(cfg: RunConfig, out: Path, show_progress: bool = True) -> dict:
    t0 = time.perf_counter()
    trainer = PPOTrainer(cfg, out, show_progress)
    print(f"[ppo] {len(trainer.prompts):,} prompts; {cfg.ppo.iterations} iterations x {cfg.ppo.rollout_prompts} "
          f"rollouts, {cfg.ppo.epochs} epochs; kl_coef {cfg.ppo.kl_coef} ({'adaptive' if cfg.ppo.adaptive_kl else 'fixed'})")
    if not trainer.fit():
        raise KeyboardInterrupt
    stage_dir = trainer.stage_dir
    write_model_dir(stage_dir, trainer.policy, trainer.tokenizer_file,
                    {"stage": "ppo", "iterations": trainer.iteration, "init": str(trainer.init_dir),
                     "reward_model": str(trainer.rm_dir)})
    write_tokenizer_config(stage_dir)
    history = trainer.metrics.read()
    summary = {
        "stage": "ppo",
        "iterations": trainer.iteration,
        "final": history[-1] if history else {},
        "train_wall_s": sum(r["seconds"] for r in history),
    }
    summary.update(evaluate_policy(cfg, Path(out), trainer, "ppo", show_progress))
    summary["wall_s"] = time.perf_counter() - t0
    return summary


def evaluate_policy(cfg: RunConfig, out: Path, trainer: "PPOTrainer", label: str, show_progress: bool) -> dict:
    """Held-out evaluation of the tuned policy next to its starting (SFT) model: gold score (greedy
    and T=1 samples), reward-model score of the samples, KL to the reference, and the paired
    difference in gold score with a 95% CI."""
    from picochat.eval.gold_eval import evaluate_gold, gold_gains, gold_summary
    from picochat.eval.kl import sampled_kl
    from picochat.train.sft import held_out_subset
    from picochat.world import read_chat_examples

    pcfg = cfg.ppo
    if trainer.gold is None or pcfg.eval_prompts <= 0:
        return {}
    examples = held_out_subset(read_chat_examples(out / "world" / "chat_test.jsonl"), pcfg.eval_prompts)
    kwargs = dict(precision=trainer.precision, max_new_tokens=pcfg.eval_max_new_tokens, n_samples=pcfg.eval_samples,
                  seed=pcfg.train.seed, show_progress=show_progress)
    after = evaluate_gold(trainer.policy, trainer.tokenizer, examples, trainer.gold, label=label, **kwargs)
    before = evaluate_gold(trainer.reference, trainer.tokenizer, examples, trainer.gold, label="sft", **kwargs)
    prompts = [e.prompt() for e in examples]
    kl = sampled_kl(trainer.policy, trainer.reference, trainer.tokenizer, prompts, trainer.precision,
                    n_samples=1, max_new_tokens=pcfg.eval_max_new_tokens, seed=pcfg.train.seed)
    k = pcfg.eval_samples

    def mean_rm_score(result: dict) -> float | None:  # RM score of the T=1 samples evaluate_gold drew
        if "samples" not in result:
            return None
        texts, finished = zip(*result["samples"])
        return statistics.fmean(trainer.reward.score(prompts * k, list(texts), list(finished)))

    lines = [f"# {label.upper()} vs SFT on held-out prompts (greedy)\n"]
    for a, b in list(zip(after["examples"], before["examples"]))[:12]:
        lines.append(f"## [{a['task']}/{a['lang']}] {a['prompt']}\n\n- **{label}** (gold {a['score']:.2f}): "
                     f"{a['answer']}\n- **sft** (gold {b['score']:.2f}): {b['answer']}\n")
    atomic_write_text(trainer.stage_dir / "samples.md", "\n".join(lines))
    return {
        "gold_score": after["greedy"],
        "gold_score_sampled": after.get("sampled"),
        f"gold_score_best_of_{k}": after.get(f"best_of_{k}"),
        "gold_score_sft": before["greedy"],
        "gold_score_sft_sampled": before.get("sampled"),
        **gold_gains(after, before),
        "rm_score_sampled": mean_rm_score(after),
        "rm_score_sft_sampled": mean_rm_score(before),
        "kl": kl["mean"],
        "kl_stderr": kl.get("stderr"),
        "gold": gold_summary(after),
        "gold_sft": gold_summary(before),
    }
