"""RLHF with PPO (`picochat ppo`): optimise the SFT policy against the reward model, on a KL leash.

One iteration, InstructGPT-style:
  1. rollout: sample `samples_per_prompt` responses to each of a batch of prompts from the policy
     (KV-cache sampler);
  2. score: the reward `ppo.reward` names (the reward model's normalised score, or the gold
     scorer's), minus a penalty for responses that never end; per-token reward = −β·KL(policy‖SFT)
     on every token plus the score on the last one (or β·KL as a loss term: `ppo.kl_penalty=loss`);
  3. advantages: `gae` with values from the value model (initialised from the reward model), or,
     with no value model at all, `rloo` / `grpo`: each response's reward against the other
     responses to the same prompt;
  4. update: several epochs over shuffled minibatches of the clipped policy loss and clipped
     value loss (+ optional PPO-ptx pretraining loss), with gradient accumulation and clipping.
Up to four models: policy (trained), value (trained; gae only), reference = SFT (frozen), reward
model (frozen; reward=rm only); none has dropout. Everything random derives from (seed,
iteration), and the checkpoint holds the trained models, the optimizer and the KL controller, so
a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from picochat.algos.ppo import (
    AdaptiveKLController,
    FixedKLController,
    best_of_group_advantages,
    entropy_from_logits,
    explained_variance,
    gae,
    grpo_advantages,
    k3_kl_loss,
    masked_mean,
    masked_whiten,
    policy_loss,
    rloo_advantages,
    sequence_to_token_advantages,
    token_rewards,
    value_loss,
    whiten_with,
)
from picochat.config import PPOConfig, RunConfig
from picochat.core import distributed, parallel
from picochat.core.checkpoint import TOKENIZER_FILE, load_checkpoint_state, load_weights, save_checkpoint
from picochat.core.io import MetricsLog
from picochat.core.model import RMSNorm, lm_loss
from picochat.core.precision import autocast, default_device, resolve_precision
from picochat.core.rollout import Rollout, response_logits, response_logprobs, sample_rollout
from picochat.data.ppo_prompts import load_ppo_prompts
from picochat.data.shards import load_shards
from picochat.layout import load_model, load_model_and_tokenizer, model_location, world_file
from picochat.train.pretrain import random_windows
from picochat.train.rewards import build_reward
from picochat.train.trainer import GracefulInterrupt, build_optimizer
from picochat.world import GoldScorer, read_world

VALUE_DIR = "value"  # the value model's directory inside a PPO checkpoint


def kl_controller(pcfg: PPOConfig):
    if pcfg.adaptive_kl:
        return AdaptiveKLController(pcfg.kl_coef, pcfg.kl_target, pcfg.kl_horizon)
    return FixedKLController(pcfg.kl_coef)


def select_trainable(model: torch.nn.Module, which: str) -> int:
    """Freeze every parameter of `model` but those `which` names (ppo.trainable); returns how many
    values stay trainable. "norms": the gains of every RMSNorm."""
    if which not in ("all", "norms"):
        raise ValueError(f"unknown ppo.trainable {which!r}")
    model.requires_grad_(which == "all")
    if which == "norms":
        for module in model.modules():
            if isinstance(module, RMSNorm):
                module.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def whiten_over_ranks(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """`masked_whiten` with the mean and (unbiased) variance of every process's rollouts together,
    so advantages are scaled alike everywhere; in one process, exactly `masked_whiten`."""
    if distributed.world_size() == 1:
        return masked_whiten(x, mask, shift_mean)
    valid = mask.bool()
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    total, count = distributed.all_reduce(torch.stack([torch.where(valid, x, zero).sum(), valid.to(x.dtype).sum()]))
    mean = total / count
    squares = distributed.all_reduce(torch.where(valid, x - mean, zero).pow(2).sum())
    return whiten_with(x, mask, mean, squares / (count - 1), shift_mean)


class PPOTrainer:
    """Under torchrun every process rolls out its share of the iteration's prompts (with a sampling
    seed of its own), advantages are whitened with the statistics of all of them, and the policy
    and value updates run under DDP, so all processes keep the same weights; rank 0 logs and saves."""

    def __init__(self, cfg: RunConfig, out: Path, show_progress: bool = True, stage_dir: Path | None = None,
                 start: Path | None = None):
        """stage_dir: where checkpoints and logs go (default <out>/ppo); start: the policy's start
        (default ppo.init, which is always the frozen reference of the KL penalty: a later RLHF
        round continues from the previous round's policy and is still held near the SFT model)."""
        self.cfg, self.pcfg, self.out = cfg, cfg.ppo, Path(out)
        self.stage_dir = Path(stage_dir) if stage_dir else self.out / "ppo"
        self.rank, self.world_size, self.is_main = distributed.rank(), distributed.world_size(), distributed.is_main()
        self.show_progress = show_progress and self.is_main
        self.device = default_device()
        self.precision = resolve_precision(self.pcfg.precision, self.device)
        init = model_location(self.pcfg.init, "sft", self.out)
        self.policy, self.tokenizer, meta = load_model_and_tokenizer(start or init, self.device)
        self.tokenizer_file = Path(meta["model_dir"]) / TOKENIZER_FILE  # copied into every model directory written
        self.reference, _ = load_model(init, self.device)
        self.reference.requires_grad_(False).eval()
        self.n_trainable = select_trainable(self.policy, self.pcfg.trainable)
        self.reward_fn, self.reward_model = build_reward(self.pcfg, self.out, self.device)
        self.rm_dir = model_location(self.pcfg.reward_model, "rm", self.out) if self.reward_model else None
        self.init_dir = start or init
        self.value = self._value_model(init) if self.pcfg.advantage == "gae" else None  # critic-free: none
        # The update's forward passes go through DDP (gradients all-reduced); rollouts, scores and
        # old log-probs use the plain modules, which need no communication.
        self.policy_ddp = parallel.wrap(self.policy, "ddp", self.device)
        self.value_ddp = parallel.wrap(self.value, "ddp", self.device) if self.value is not None else None
        tcfg = self.pcfg.train
        if tcfg.threads > 0:
            torch.set_num_threads(tcfg.threads)
        self.optimizer = build_optimizer(torch.nn.ModuleList(self.trained_models()), tcfg, self.device)
        self.kl_ctl = kl_controller(self.pcfg)
        self.skip_idle_rows = self.pcfg.update_skips_idle_rows  # see _minibatch_loss
        prompt_sets = load_ppo_prompts(self.pcfg, self.out, self.tokenizer, self.policy.cfg.max_seq_len)
        self.prompts, self.eval_prompts = prompt_sets.train, prompt_sets.held_out  # held_out: from files only
        self.n_prompts_too_long = prompt_sets.n_too_long
        self.problems = prompt_sets.problems
        for problem in self.problems[:5]:
            print(f"[ppo] skipped: {problem}")
        if len(self.prompts) < self.world_size:
            raise ValueError(f"{len(self.prompts)} PPO prompts cannot be shared by {self.world_size} processes")
        self.metrics = MetricsLog(self.stage_dir / "metrics.jsonl")
        self.iteration = 0
        self.ptx_tokens = None
        if self.pcfg.ptx_coef > 0:
            ptx_dir = Path(self.pcfg.ptx_data) if self.pcfg.ptx_data else self.out / "pretrain" / "data"
            self.ptx_tokens = load_shards(ptx_dir)[0]
        self.gold = None
        if world_file(self.out).exists() and not self.pcfg.prompts:
            self.gold = GoldScorer(read_world(world_file(self.out))[0])

    def _value_model(self, init) -> torch.nn.Module:
        """The value model's start: ppo.value_init, else the reward model (InstructGPT), else (a
        reward that is no model) the policy's start with a fresh scalar head."""
        if self.pcfg.value_init:
            return load_model(model_location(self.pcfg.value_init, "", self.out), self.device)[0]
        if self.rm_dir is not None:
            return load_model(self.rm_dir, self.device)[0]
        value, _ = load_model(init, self.device)
        torch.manual_seed(self.pcfg.train.seed)
        value.set_head("scalar")
        torch.nn.init.normal_(value.score.weight, std=1e-3)  # start from no opinion
        return value.to(self.device)

    def trained_models(self) -> list[torch.nn.Module]:
        return [self.policy] + ([self.value] if self.value is not None else [])

    # -- checkpoints -------------------------------------------------------------------------

    def save(self) -> None:
        """`<stage>/checkpoint/`: the policy's model directory, the value model's in `value/`, and
        trainer_state.pt (iteration, optimizer of both, KL controller, RNG)."""
        if not self.is_main:  # all processes hold the same weights; rank 0 writes them
            return
        state = {"step": self.iteration, "iteration": self.iteration, "optimizer": self.optimizer.state_dict(),
                 "kl_ctl": self.kl_ctl.state_dict(), "torch_rng": torch.get_rng_state()}
        extra = {VALUE_DIR: (self.value, {"stage": "ppo-value"})} if self.value is not None else {}
        save_checkpoint(self.stage_dir, self.policy, self.tokenizer_file, state,
                        {"stage": "ppo", "iteration": self.iteration}, extra_models=extra)

    def try_resume(self) -> bool:
        """Load the latest checkpoint, if any (also one written before trainer_state.pt had "step":
        the iteration is read from "iteration"). Returns whether it resumed."""
        found = load_checkpoint_state(self.stage_dir)
        if found is None:
            return False
        ckpt, state = found
        load_weights(self.policy, ckpt)
        if self.value is not None:
            load_weights(self.value, ckpt / VALUE_DIR)
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        torch.set_rng_state(state["torch_rng"])
        self.iteration = int(state["iteration"])
        if self.is_main:
            self.metrics.truncate_after(self.iteration)
        return True

    # -- one iteration -----------------------------------------------------------------------

    def _prompt_batch(self) -> list[list[dict]]:
        """`rollout_prompts` distinct prompts for this process: its share of the iteration's
        global draw of rollout_prompts × world_size (fewer when the pool is smaller)."""
        rng = np.random.default_rng([self.pcfg.train.seed, self.iteration])
        n_global = min(self.pcfg.rollout_prompts * self.world_size, len(self.prompts))
        idx = rng.choice(len(self.prompts), size=n_global, replace=False)
        return [self.prompts[i] for i in distributed.rank_share(idx, n_global // self.world_size, self.rank)]

    @torch.no_grad()
    def _score(self, ro: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores used as reward (B,), the reward function's own scores (B,)). A chat answer that
        never ended is penalised; a text continuation is cut at its length on purpose and is not."""
        raw = torch.tensor(self.reward_fn(ro.prompts, ro.texts, ro.finished.tolist()), dtype=torch.float32)
        if self.pcfg.format == "text":
            return raw.clone(), raw
        scores = raw + (~ro.finished).float() * self.pcfg.no_eos_penalty
        return scores, raw

    @torch.no_grad()
    def _old_values_and_logprobs(self, ro: Rollout):
        ids, attn = ro.input_ids.to(self.device), ro.attention_mask.to(self.device)
        with autocast(self.precision, self.device):
            self.policy.eval()
            logprobs, _ = response_logprobs(self.policy, ids, attn, ro.prompt_width, self.pcfg.temperature)
            ref_logprobs, _ = response_logprobs(self.reference, ids, attn, ro.prompt_width, self.pcfg.temperature)
            values = None if self.value is None else response_logits(self.value, ids, attn, ro.prompt_width).float()
        return logprobs, ref_logprobs, values

    def _ptx_loss(self, step_seed: list[int]) -> torch.Tensor:
        seq = min(self.cfg.pretrain.seq_len, self.policy.cfg.max_seq_len)
        b = random_windows(self.ptx_tokens, seq, self.pcfg.ptx_batch_size, step_seed[0], step_seed[1], step_seed[2],
                           self.rank, self.world_size)
        return lm_loss(self.policy(b["input_ids"].to(self.device)), b["targets"].to(self.device))

    def iterate(self) -> dict:
        pcfg = self.pcfg
        seed = pcfg.train.seed
        t0 = time.perf_counter()
        # A group is the samples_per_prompt rows of one prompt, side by side: rows i*k .. i*k+k-1.
        prompts = [p for p in self._prompt_batch() for _ in range(pcfg.samples_per_prompt)]
        ro = sample_rollout(self.policy, self.tokenizer, prompts, pcfg.max_new_tokens, pcfg.temperature,
                            seed=distributed.rank_seed(seed * 100_003 + self.iteration), precision=self.precision)
        t_rollout = time.perf_counter() - t0
        scores, raw_scores = self._score(ro)
        old_logprobs, ref_logprobs, old_values = self._old_values_and_logprobs(ro)
        mask = ro.response_mask.to(self.device)
        kl_in_reward = self.kl_ctl.value if pcfg.kl_penalty == "reward" else 0.0
        rewards, kl = token_rewards(scores.to(self.device), old_logprobs, ref_logprobs, mask, kl_in_reward,
                                    kind=pcfg.kl_estimator)
        if pcfg.whiten_rewards:
            rewards = whiten_over_ranks(rewards, mask, shift_mean=False)
        advantages, returns = self._advantages(rewards, old_values, mask)
        if pcfg.whiten_advantages and pcfg.advantage != "best":  # best: whitening would push the others down
            advantages = whiten_over_ranks(advantages, mask)
        t1 = time.perf_counter()

        stats: dict[str, list[float]] = {}
        self.update_tokens = 0.0  # tokens the update's forwards went through (_minibatch_loss adds them up)
        B = ro.input_ids.shape[0]
        mb = pcfg.minibatch_size
        micro = max(1, mb // pcfg.train.grad_accum_steps)
        for model in self.trained_models():
            model.train()
        for epoch in range(pcfg.epochs):
            order = np.random.default_rng([seed, self.iteration, epoch]).permutation(B)
            for start in range(0, B, mb):
                rows = order[start : start + mb]
                for g in self.optimizer.param_groups:
                    g["lr"] = self._lr()
                micro_starts = range(0, len(rows), micro)
                for m_start in micro_starts:
                    r = torch.as_tensor(rows[m_start : m_start + micro], device=self.device)
                    weight = len(r) / len(rows)
                    with self._gradient_sync(enabled=m_start == micro_starts[-1]):
                        loss, s = self._minibatch_loss(ro, r, old_logprobs, ref_logprobs, old_values, advantages,
                                                       returns, mask)
                        if self.ptx_tokens is not None:
                            ptx = self._ptx_loss([seed, self.iteration, epoch * 10_000 + start + m_start])
                            loss = loss + pcfg.ptx_coef * ptx
                            s["ptx_loss"] = ptx.item()
                        (loss * weight).backward()
                    for k, v in s.items():
                        stats.setdefault(k, []).append(v)
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    [p for m in self.trained_models() for p in m.parameters()], pcfg.train.grad_clip)
                stats.setdefault("grad_norm", []).append(float(grad_norm))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        t2 = time.perf_counter()

        seq_kl = (kl * mask).sum(1)  # (B,) sequence KL estimate of this rollout
        mean_kl = float(seq_kl.mean())
        if self.world_size > 1:  # over every process's rollouts (equal shares): all keep the same β
            mean_kl = distributed.sum_over_ranks([mean_kl])[0] / self.world_size
        self.kl_ctl.update(mean_kl, B * self.world_size)
        record = {
            "iteration": self.iteration + 1,
            "step": self.iteration + 1,
            # the reward function's own score: the reward model's (rm_score), else reward_score
            ("rm_score" if pcfg.reward == "rm" else "reward_score"): float(raw_scores.mean()),
            "reward": float(scores.mean()),
            "kl": mean_kl,
            "kl_coef": self.kl_ctl.value,
            "response_length": float(mask.sum(1).mean()),
            "eos_rate": float(ro.finished.float().mean()),
            **self._value_stats(old_values, returns, mask),
            **{k: statistics.fmean(v) for k, v in stats.items()},
            "rollout_tokens_per_s": float(mask.sum()) / max(1e-9, t_rollout),
            "train_tokens_per_s": self.update_tokens / max(1e-9, t2 - t1),
            "train_tokens": self.update_tokens,  # what the update's forwards and backwards went through
            "seconds": t2 - t0,
        }
        if self.gold is not None:
            record["gold_score"] = statistics.fmean(
                self.gold.score(p, t, finished=bool(f)) for p, t, f in zip(ro.prompts, ro.texts, ro.finished))
        # Means over processes (each holds the same number of rollouts; explained variance is the
        # mean of the processes' own), throughput summed, time the slowest's.
        record = distributed.reduce_metrics(record,
                                            sum_keys=("rollout_tokens_per_s", "train_tokens_per_s", "train_tokens"),
                                            max_keys=("seconds",))
        self.iteration += 1
        return record

    def _gradient_sync(self, enabled: bool):
        """Micro-steps before the last of a minibatch accumulate gradients without all-reducing them."""
        stack = contextlib.ExitStack()
        for wrapped in (self.policy_ddp, self.value_ddp):
            if wrapped is not None:
                stack.enter_context(parallel.gradient_sync(wrapped, enabled))
        return stack

    def _lr(self) -> float:
        """Linear warmup over train.lr_warmup_steps iterations, then constant at train.lr: PPO has no
        decay schedule (its config rejects train.schedule, min_lr_ratio and wsd_decay_fraction)."""
        tcfg = self.pcfg.train
        warm = min(tcfg.lr_warmup_steps, self.pcfg.iterations)
        if self.iteration < warm:
            return tcfg.lr * (self.iteration + 1) / warm
        return tcfg.lr

    def _advantages(self, rewards: torch.Tensor, old_values: torch.Tensor | None,
                    mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(advantages (B, T), returns (B, T) for the value loss, None without a value model).
        rloo/grpo/best: each response's summed reward (score − β·ΣKL when the KL is in the
        reward) against the other responses to its prompt, on every one of its tokens."""
        pcfg = self.pcfg
        if pcfg.advantage == "gae":
            return gae(rewards, old_values, mask, gamma=pcfg.gamma, lam=pcfg.lam)
        groups = (rewards * mask).sum(1).view(-1, pcfg.samples_per_prompt)  # (prompts, k)
        estimators = {"rloo": rloo_advantages, "grpo": grpo_advantages, "best": best_of_group_advantages}
        group_advantages = estimators[pcfg.advantage](groups)
        return sequence_to_token_advantages(group_advantages.reshape(-1), mask), None

    @staticmethod
    def _value_stats(old_values, returns, mask) -> dict:
        if old_values is None:
            return {}
        return {"explained_variance": explained_variance(old_values, returns, mask),
                "advantage_mean_raw": float(masked_mean(returns - old_values, mask))}

    def _minibatch_loss(self, ro, r, old_logprobs, ref_logprobs, old_values, advantages, returns, mask):
        # Rows with no advantage anywhere change nothing (see skip_idle_rows): the loss is computed
        # on the others and scaled by their share of the valid tokens, the same mean over all rows.
        # The statistics (approx_kl, clipfrac, ratio_*, entropy) are then those of the reinforced rows.
        share = 1.0
        reinforced = (advantages[r] != 0).any(1)  # (rows,): the rows with an advantage somewhere
        if self.skip_idle_rows and 0 < int(reinforced.sum()) < len(r):
            share = float(mask[r[reinforced]].sum() / mask[r].sum())
            r, reinforced = r[reinforced], reinforced[reinforced]
        # Only the columns these rows use: from their longest prompt's first token to their longest
        # response's last. The rollout is padded to the longest of all rows; a minibatch of a few
        # of them needs less (often half), and the padding columns change nothing but the cost.
        attn = ro.attention_mask.to(self.device)[r]
        P = ro.prompt_width
        prompt_len = int(attn[:, :P].sum(1).max())
        R = max(1, int(mask[r].sum(1).max()))
        ids = ro.input_ids.to(self.device)[r][:, P - prompt_len : P + R]
        attn = attn[:, P - prompt_len : P + R]
        m = mask[r][:, :R]
        self.update_tokens += float(attn.sum())
        with autocast(self.precision, self.device):
            logprobs, logits = response_logprobs(self.policy_ddp, ids, attn, prompt_len, self.pcfg.temperature)
            values = None if self.value is None else response_logits(self.value_ddp, ids, attn, prompt_len).float()
        pg_loss, pg_stats = policy_loss(logprobs, old_logprobs[r][:, :R], advantages[r][:, :R], m, self.pcfg.clip_range)
        pg_loss = pg_loss * share
        loss = pg_loss
        stats = {"policy_loss": pg_loss.item(), **pg_stats}
        if values is not None:
            vf_loss, vf_stats = value_loss(values, old_values[r][:, :R], returns[r][:, :R], m, self.pcfg.vf_clip_range)
            loss = loss + self.pcfg.vf_coef * vf_loss
            stats |= {"value_loss": vf_loss.item(), **vf_stats}
        if self.pcfg.kl_penalty == "loss":
            kl_loss = k3_kl_loss(logprobs, ref_logprobs[r][:, :R], m)
            loss = loss + self.kl_ctl.value * kl_loss
            stats["kl_loss"] = kl_loss.item()
        ent = entropy_from_logits(logits.detach(), m)
        if self.pcfg.entropy_coef:
            # a mean over the tokens of the rows it reads (not scaled by their share, unlike the
            # policy-gradient term: its strength does not depend on how many rows were reinforced)
            ent_mask = m if self.pcfg.entropy_rows == "all" else m * reinforced[:, None]
            if ent_mask.any():  # a minibatch may hold no reinforced row
                loss = loss - self.pcfg.entropy_coef * entropy_from_logits(logits, ent_mask)
        stats["entropy"] = float(ent)
        return loss, {k: float(v) for k, v in stats.items()}

    # -- the loop ----------------------------------------------------------------------------

    def fit(self) -> bool:
        """Run the remaining iterations; returns False if interrupted (checkpoint saved)."""
        pcfg = self.pcfg
        torch.manual_seed(pcfg.train.seed)
        if self.try_resume() and self.is_main:
            tqdm.write(f"[ppo] resuming from iteration {self.iteration} (checkpoint in {self.stage_dir})")
        bar = tqdm(total=pcfg.iterations, initial=self.iteration, desc="ppo", unit="iter",
                   disable=not self.show_progress, dynamic_ncols=True)
        stop = GracefulInterrupt()
        stopping = False  # agreed by all processes, so they stop after the same iteration
        try:
            while self.iteration < pcfg.iterations and not stopping:
                record = self.iterate()
                stopping = distributed.sum_over_ranks([float(stop.requested)])[0] > 0
                bar.update(1)
                if self.is_main:
                    self.metrics.write(record)
                    if self.iteration % pcfg.train.log_every == 0 or self.iteration == pcfg.iterations:
                        bar.write(" | ".join([f"iter {self.iteration:>4}"] + [
                            f"{k} {record[k]:.3g}" for k in ("rm_score", "gold_score", "kl", "kl_coef", "entropy",
                                                              "response_length", "eos_rate", "approx_kl", "clipfrac",
                                                              "explained_variance") if k in record]))
                if (pcfg.train.ckpt_every and self.iteration % pcfg.train.ckpt_every == 0) \
                        or self.iteration == pcfg.iterations or stopping:
                    self.save()
        finally:
            stop.restore()
            bar.close()
        if stopping:
            if self.is_main:
                tqdm.write(f"[ppo] interrupted at iteration {self.iteration}: checkpoint saved; rerun to resume")
            return False
        return True


