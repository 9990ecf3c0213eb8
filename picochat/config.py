"""Typed configuration for every stage, YAML presets, and dotted command-line overrides.

One `RunConfig` describes a whole run (all stages); each stage reads its own section. The order of
precedence is: dataclass defaults < preset (`picochat/configs/<name>.yaml`) < `--config FILE` <
`key=value` overrides on the command line. There is exactly one place for every default: the
dataclasses below.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from picochat.core.generate import SamplingConfig
from picochat.core.io import atomic_write_text
from picochat.core.model import ModelConfig
from picochat.world import ChatTasksConfig, WorldConfig

PRESETS_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message says which key and why."""


Unused = dict[str, tuple[Any, Any, str]]  # dotted key -> (its value, its default, why the stage does not read it)


def _unused(prefix: str, section: Any, defaults: Any, why: dict[str, str]) -> Unused:
    """The fields of `section` named in `why` (fields its stage does not read, in this config) that
    are set away from their defaults. A default stays accepted: a run's saved config.yaml repeats
    every field, and the fingerprints of finished stages hash them."""
    return {f"{prefix}.{name}": (getattr(section, name), getattr(defaults, name), reason)
            for name, reason in why.items() if getattr(section, name) != getattr(defaults, name)}


@dataclass
class TrainConfig:
    """The training loop's knobs, one copy per training stage (`pretrain.train`, `sft.train`, ...).

    pretrain, sft, rm and dpo run the shared loop (picochat.train.trainer), which reads every field
    (except rm.train.eval_batches: the reward model is evaluated on all its held-out prompts). PPO
    runs a loop of its own (picochat.train.ppo) and reads max_steps (= PPO iterations),
    grad_accum_steps, lr, lr_warmup_steps (linear warmup, then constant), weight_decay, beta1,
    beta2, grad_clip, precision, log_every, ckpt_every, seed, threads and parallel (ddp only); it
    rejects any other field set away from its default (see PPO_UNUSED_TRAIN).
    """

    max_steps: int = 1000
    batch_size: int = 16  # sequences per micro-batch (per process)
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    lr_warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | wsd (warmup-stable-decay) | constant
    wsd_decay_fraction: float = 0.2  # WSD: fraction of steps spent decaying at the end
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    precision: str = "auto"  # auto | bf16 | fp32 (auto = bf16 where the hardware runs it fast)
    # torch.compile the training loss (picochat/train/compiled.py; eager if compiling fails): pays
    # where batch shapes are fixed, e.g. pretraining (figures in bench/README.md)
    compile: bool = False
    eval_every: int = 100  # steps between evaluations (0 = only at the end)
    eval_batches: int = 16  # micro-batches per evaluation
    log_every: int = 10  # steps between log lines / metrics.jsonl records
    ckpt_every: int = 100  # steps between checkpoints (0 = only at the end / on Ctrl-C)
    seed: int = 1337
    threads: int = 0  # torch CPU threads (0 = torch's default)
    tensorboard: bool = False  # also write TensorBoard events (needs `pip install picochat[tensorboard]`)
    parallel: str = "ddp"  # under torchrun: ddp (a copy per process) | fsdp (FSDP2: shard params, grads, AdamW state)

    def validate(self) -> None:
        positive = ("max_steps", "batch_size", "grad_accum_steps", "log_every", "eval_batches")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be > 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.schedule not in ("cosine", "wsd", "constant"):
            raise ConfigError(f"train.schedule must be cosine, wsd or constant, got {self.schedule!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"train.precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.parallel not in ("ddp", "fsdp"):
            raise ConfigError(f"train.parallel must be ddp or fsdp, got {self.parallel!r}")


@dataclass
class TokenizerStageConfig:
    vocab_size: int = 4096
    min_frequency: int = 2
    sources: list[str] = field(default_factory=list)  # files/dirs; empty = the built-in world corpus
    text_field: str = "text"
    max_docs: int = 0  # train on at most this many documents (0 = all)


@dataclass
class SampleConfig:
    """`pretrain.sample`: the samples the pretrain stage writes to samples.md. A config section, so
    "off" is a plain number (top_k 0, top_p 1) that YAML and `key=value` can spell; `sampling()`
    turns it into the sampler's `picochat.core.generate.SamplingConfig`, where "off" is None."""

    prompts: list[str] = field(default_factory=list)  # empty = prompts derived from the data
    max_new_tokens: int = 64
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    top_p: float = 0.95  # nucleus sampling; 1 (or 0) = off
    seed: int = 0

    def sampling(self, stop_ids: tuple[int, ...] = ()) -> SamplingConfig:
        """The sampler's settings for these: the one place the two conventions for "off" meet."""
        return SamplingConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k or None,
            top_p=self.top_p if 0 < self.top_p < 1 else None,
            seed=self.seed,
            stop_ids=stop_ids,
        )


@dataclass
class PretrainConfig:
    sources: list[str] = field(default_factory=list)  # files/dirs; empty = the built-in world corpus
    text_field: str = "text"
    val_fraction: float = 0.05
    seq_len: int = 256
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


def _sft_train_defaults() -> TrainConfig:
    return TrainConfig(max_steps=300, batch_size=16, lr=1e-3, lr_warmup_steps=20, eval_every=100,
                       eval_batches=8, log_every=10, ckpt_every=100)


@dataclass
class SFTConfig:
    sources: list[str] = field(default_factory=list)  # chat JSONL files/dirs; empty = the world's chat tasks
    init: str = ""  # model to start from: a stage of this run (e.g. pretrain) or a directory; empty = pretrain
    max_examples: int = 0  # read at most this many conversations per source (0 = all)
    val_fraction: float = 0.05  # held-out share of your own data (world tasks have their own test split)
    seq_len: int = 256  # conversations are cut to this many tokens
    train: TrainConfig = field(default_factory=_sft_train_defaults)
    # The after-training evaluation. sft, ppo and dpo each have these three (they mean the same in
    # all three): a stage's fingerprint covers its own section only, so changing how PPO is
    # evaluated redoes PPO, not SFT. With your own data (sft.sources) there is no gold scorer: the
    # SFT model answers the first 8 held-out conversations greedily, eval_samples is not used.
    eval_prompts: int = 300  # held-out world prompts answered for the gold score (0 = skip)
    eval_samples: int = 4  # samples per prompt at temperature 1 (mean per sample and best-of-K)
    eval_max_new_tokens: int = 96  # answer length cap for the evaluation

    def unused_settings(self) -> Unused:
        if not self.sources or self.eval_prompts <= 0:
            return {}
        return _unused("sft", self, SFTConfig(), {
            "eval_samples": "with sft.sources there is no gold scorer to score samples with (the SFT model "
                            "answers held-out conversations greedily, see samples.md)"})


def _rm_train_defaults() -> TrainConfig:
    # ≈1 epoch over the ~3,400 built-in prompts that have ranked pairs (of 4,000 labeled at K=8):
    # like InstructGPT, we saw the reward model overfit after one epoch (with 1,500 x 4 labels,
    # held-out gold accuracy 0.74 at step 100 of 1 epoch, 0.72 at step 300).
    return TrainConfig(max_steps=425, batch_size=8, lr=3e-4, lr_warmup_steps=20, eval_every=100,
                       eval_batches=1, log_every=25, ckpt_every=100)


LABEL_TASK_MIXES = ("natural", "even")  # how the label stage draws the world's train prompts


@dataclass
class LabelConfig:
    # K=8: the simulated labeler's ranking then agrees with the gold order on 0.81 of pairs, at K=4
    # on 0.71 (every answer is compared 7 times, so single flipped decisions average out), and a
    # prompt gives 28 pairs instead of 6. 4,000 prompts x 8 trained a reward model whose best-of-4
    # pick gained +0.071 gold on held-out prompts where 1,500 x 4 gained +0.032 (see README).
    k: int = 8  # responses per prompt, 2..9
    n_prompts: int = 4000  # train prompts to label
    n_test_prompts: int = 200  # held-out prompts labeled into a separate file for RM evaluation
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 96
    flip_prob: float = 0.25  # chance the simulated annotator gets any one pairwise decision wrong
    tie_margin: float = 0.0  # gold scores within this margin are "can't tell" (a tie in the ranking)
    seed: int = 0
    batch_prompts: int = 16  # prompts sampled together (x k rows per forward)
    # The built-in world's train prompts to label: natural (the world's mix: 45% facts, 20% arithmetic,
    # 5% each benign and harmful requests) | even (the task types in turn, so the reward model sees
    # as many rankings of the rare types, where it is weakest, as of the common ones)
    task_mix: str = "natural"

    def validate(self) -> None:
        if self.task_mix not in LABEL_TASK_MIXES:
            raise ConfigError(f"label.task_mix must be one of {', '.join(LABEL_TASK_MIXES)}, got {self.task_mix!r}")


RM_ENSEMBLE_COMBINES = ("mean_minus_std", "mean", "min")  # picochat.reward_model.combine_member_scores


@dataclass
class RMConfig:
    sources: list[str] = field(default_factory=list)  # preference JSONL files/dirs; empty = <out>/label/
    init: str = ""  # model to start from: a stage of this run (e.g. pretrain) or a directory; empty = sft
    max_records: int = 0  # read at most this many records (0 = all)
    val_fraction: float = 0.1  # held-out share of your own data (the built-in labels have a test file)
    seq_len: int = 256  # prompt + response tokens per row
    # auto | pairwise (InstructGPT) | plackett_luce (listwise, Zhu et al. 2023) | best_of_k (Ziegler et al.) |
    # mse | bce (scalar labels)
    loss: str = "auto"
    head_init_std: float = 1e-3  # the new scalar head starts close to "no opinion"
    normalize: str = "bias_gain"  # fit so SFT samples score mean 0 (bias) and std 1 (gain) | bias | none
    # prompts whose SFT samples the normalisation is fitted on: 500 x K answers pin a mean and a std
    # well (the standard error of the mean is ~0.05 std), at a quarter of the scoring 2,000 cost
    normalize_on: int = 500
    # Reward-model ensemble (Coste et al. 2024): members trained from seeds train.seed, +1, ...; every
    # consumer (PPO, the report, serve, score) reads their normalised scores combined: mean_minus_std
    # (mean − ensemble_std_coef × the members' std: unsure answers score lower) | min | mean
    ensemble: int = 1
    ensemble_combine: str = "mean_minus_std"
    ensemble_std_coef: float = 1.0
    # train.batch_size = prompts per micro-batch; train.eval_batches is not used (every evaluation
    # scores all held-out prompts)
    train: TrainConfig = field(default_factory=_rm_train_defaults)

    def unused_settings(self) -> Unused:
        unused = _unused("rm.train", self.train, _rm_train_defaults(), {
            "eval_batches": "the reward model is evaluated on all its held-out prompts at every evaluation"})
        if self.ensemble == 1:
            unused |= _unused("rm", self, RMConfig(), {k: "rm.ensemble is 1: there are no members to combine"
                                                       for k in ("ensemble_combine", "ensemble_std_coef")})
        return unused

    def validate(self) -> None:
        if self.loss not in ("auto", "pairwise", "plackett_luce", "best_of_k", "mse", "bce"):
            raise ConfigError(f"rm.loss must be auto, pairwise, plackett_luce, best_of_k, mse or bce, "
                              f"got {self.loss!r}")
        if self.normalize not in ("bias_gain", "bias", "none"):
            raise ConfigError(f"rm.normalize must be bias_gain, bias or none, got {self.normalize!r}")
        if self.ensemble < 1:
            raise ConfigError(f"rm.ensemble must be at least 1 (members), got {self.ensemble}")
        if self.ensemble_combine not in RM_ENSEMBLE_COMBINES:
            raise ConfigError(f"rm.ensemble_combine must be one of {', '.join(RM_ENSEMBLE_COMBINES)}, "
                              f"got {self.ensemble_combine!r}")
        if self.ensemble_std_coef < 0:
            raise ConfigError(f"rm.ensemble_std_coef must be >= 0, got {self.ensemble_std_coef}")
        self.train.validate()


def _ppo_train_defaults() -> TrainConfig:
    # lr 2e-5 with kl_coef 0.1: at 5e-5 / 0.05 the RM score rose while the gold score did not.
    return TrainConfig(max_steps=40, batch_size=16, lr=2e-5, lr_warmup_steps=5, log_every=5, ckpt_every=10,
                       grad_clip=1.0, weight_decay=0.0)


_PPO_CONSTANT_LR = "PPO's learning rate is constant after train.lr_warmup_steps"
# The `ppo.train` fields PPO's own loop does not read, and why (see TrainConfig).
PPO_UNUSED_TRAIN = {
    "batch_size": "PPO's batches are ppo.rollout_prompts (rollouts per iteration) and ppo.minibatch_size "
                  "(rows per optimizer step)",
    "schedule": _PPO_CONSTANT_LR,
    "min_lr_ratio": _PPO_CONSTANT_LR,
    "wsd_decay_fraction": _PPO_CONSTANT_LR,
    "eval_every": "PPO evaluates once, after training (ppo.eval_prompts); every iteration logs its rollouts' scores",
    "eval_batches": "PPO evaluates once, after training, on ppo.eval_prompts prompts",
    "compile": "PPO runs its models uncompiled",
    "tensorboard": "PPO logs to <out>/ppo/metrics.jsonl only",
}


PPO_REWARDS = ("rm", "gold")  # the rewards of picochat.train.rewards, by name
PPO_TRAINABLE = ("all", "norms")  # which policy parameters PPO updates (picochat.train.ppo.select_trainable)


@dataclass
class PPOConfig:
    init: str = ""  # policy start and frozen reference: a stage of this run or a directory; empty = sft
    reward_model: str = ""  # a stage of this run or a directory; empty = rm
    value_init: str = ""  # value model start (stage or directory); empty = the reward model
    # Prompt files: chat/preference JSONL (format=chat) or a text corpus (format=text); empty = world
    prompts: list[str] = field(default_factory=list)
    format: str = "chat"  # chat: prompts are conversations, answers end with <|im_end|> | text: plain continuations
    prompt_field: str = "text"  # format=text: the field of the prompt files that holds the text
    prompt_tokens: int = 8  # format=text: a prompt is the first this-many tokens of a document
    max_prompt_tokens: int = 0  # skip longer prompts (0 = whatever leaves max_new_tokens of room)
    reward: str = "rm"  # what PPO maximises: rm (the reward model) | gold (the world's gold scorer, a perfect reward)
    rollout_prompts: int = 64  # prompts per iteration (samples_per_prompt answers each), per process under torchrun
    samples_per_prompt: int = 1  # answers sampled per prompt: a group, whose mean is the baseline of rloo/grpo
    # gae (value model + GAE) | rloo (leave-one-out group baseline) | grpo (group z-score) | best
    # (reinforce only each prompt's best answer: RAFT, best-of-n distillation)
    advantage: str = "gae"
    kl_penalty: str = "reward"  # reward: −kl_coef·KL on every token's reward | loss: kl_coef·k3 KL term in the loss
    whiten_advantages: bool = True  # normalise each iteration's advantages to mean 0, std 1 (advantage=best: never)
    # What of the policy RL changes: all | norms (only the RMSNorm gains, 2·n_layers+1 vectors of
    # d_model: a change that rescales features, e.g. sharpens the answer distribution, but has no
    # room to memorise facts about the prompts it trained on; see the README's RL tables).
    trainable: str = "all"
    max_new_tokens: int = 64
    temperature: float = 1.0  # rollout temperature, also used for the training log-probs
    no_eos_penalty: float = -1.0  # added to the score of a response that never ended
    kl_coef: float = 0.1  # β of the per-token KL penalty to the SFT model
    adaptive_kl: bool = False  # Ziegler et al.'s controller towards kl_target
    kl_target: float = 6.0  # adaptive_kl only
    kl_horizon: int = 10000  # adaptive_kl only
    kl_estimator: str = "k1"  # k1 (in the reward, as InstructGPT) | k3
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = False
    epochs: int = 4  # PPO epochs over each rollout batch
    minibatch_size: int = 16  # rows per optimizer step and process (split into train.grad_accum_steps micro-batches)
    clip_range: float = 0.2
    vf_clip_range: float = 0.2
    vf_coef: float = 0.1
    # β_H of an entropy term in the loss: > 0 a bonus (keeps exploring), < 0 a penalty (sharpens)
    entropy_coef: float = 0.0
    # The answers whose token entropies the term reads: all (every rollout) | reinforced (only
    # those with a non-zero advantage: each group's best under advantage=best, where it sharpens the
    # policy along the answers it learns from and the update still skips the others; with gae,
    # rloo or grpo nearly every answer)
    entropy_rows: str = "all"
    ptx_coef: float = 0.0  # PPO-ptx: weight of the pretraining loss on <out>/pretrain/data (0 = off)
    ptx_batch_size: int = 8  # ptx_coef > 0 only
    ptx_data: str = ""  # token shards for PPO-ptx (a `picochat pretrain` data dir); empty = <out>/pretrain/data
    # The after-training evaluation (as sft.eval_*): on the built-in world, gold scores of the policy
    # and its starting model on eval_prompts held-out prompts, and the KL; with your own ppo.prompts,
    # eval_prompts of them are held out and both models sample eval_samples answers of
    # max_new_tokens (the rollout length, so eval_max_new_tokens is not used), scored by the RM.
    eval_prompts: int = 300  # held-out prompts for the final evaluation (0 = skip)
    eval_samples: int = 4  # T=1 samples per held-out prompt and model
    eval_max_new_tokens: int = 96  # built-in world only: answer length cap for the gold evaluation
    # train.max_steps = PPO iterations; see TrainConfig for the fields PPO reads (others are rejected).
    train: TrainConfig = field(default_factory=_ppo_train_defaults)

    @property
    def iterations(self) -> int:
        return self.train.max_steps

    @property
    def update_skips_idle_rows(self) -> bool:
        """Whether a row whose advantage is 0 on every token adds nothing to the update's gradient,
        so the update may leave it out: no value loss, no KL term in the loss, and no entropy term
        unless it reads only the reinforced rows. Then only the policy-gradient term reads a row, and
        it is 0 there (advantage=best: 3 of 4 rows at k=4)."""
        return (self.advantage != "gae" and self.kl_penalty == "reward"
                and (not self.entropy_coef or self.entropy_rows == "reinforced"))

    @property
    def precision(self) -> str:
        return self.train.precision

    def validate(self) -> None:
        if self.format not in ("chat", "text"):
            raise ConfigError(f"ppo.format must be chat or text, got {self.format!r}")
        if self.format == "text" and not self.prompts:
            raise ConfigError("ppo.format=text needs ppo.prompts: the text files whose openings PPO continues")
        if self.prompt_tokens < 1:
            raise ConfigError(f"ppo.prompt_tokens must be >= 1, got {self.prompt_tokens}")
        if self.kl_estimator not in ("k1", "k3"):
            raise ConfigError(f"ppo.kl_estimator must be k1 or k3, got {self.kl_estimator!r}")
        if self.temperature <= 0:
            raise ConfigError("ppo.temperature must be > 0 (the policy's log-probs are taken at this temperature)")
        if self.reward not in PPO_REWARDS:
            raise ConfigError(f"ppo.reward must be one of {', '.join(PPO_REWARDS)}, got {self.reward!r}")
        if self.advantage not in ("gae", "rloo", "grpo", "best"):
            raise ConfigError(f"ppo.advantage must be gae, rloo, grpo or best, got {self.advantage!r}")
        if self.advantage != "gae" and self.samples_per_prompt < 2:
            raise ConfigError(f"ppo.advantage={self.advantage} compares the answers of one prompt: set "
                              f"ppo.samples_per_prompt to 2 or more (e.g. 4), got {self.samples_per_prompt}")
        if self.trainable not in PPO_TRAINABLE:
            raise ConfigError(f"ppo.trainable must be one of {', '.join(PPO_TRAINABLE)}, got {self.trainable!r}")
        if self.entropy_rows not in ("all", "reinforced"):
            raise ConfigError(f"ppo.entropy_rows must be all or reinforced, got {self.entropy_rows!r}")
        if self.kl_penalty not in ("reward", "loss"):
            raise ConfigError(f"ppo.kl_penalty must be reward or loss, got {self.kl_penalty!r}")
        if self.samples_per_prompt < 1:
            raise ConfigError(f"ppo.samples_per_prompt must be >= 1, got {self.samples_per_prompt}")
        if self.rollout_prompts < 1 or self.minibatch_size < 1 or self.epochs < 1:
            raise ConfigError("ppo.rollout_prompts, minibatch_size and epochs must be >= 1")
        if self.train.parallel != "ddp":
            raise ConfigError("ppo.train.parallel must be ddp: every process samples its rollouts from the whole "
                              "policy, which FSDP would have to gather at every generated token")
        self.train.validate()

    def unused_settings(self) -> Unused:
        """The ppo.train fields PPO's loop never reads, and the settings that this config's prompt
        format and prompt source leave unread. (The settings of a feature that its own switch turns
        off, kl_target with adaptive_kl=false, ptx_* with ptx_coef=0, eval_* with eval_prompts=0,
        stay accepted, ready for the switch to be turned back on.)"""
        unused = {}
        if self.format != "text":
            unused |= {k: "it shapes plain-text prompts (ppo.format=text), and ppo.format is chat"
                       for k in ("prompt_field", "prompt_tokens")}
        if self.advantage != "gae":
            unused |= {k: f"it belongs to the value model and GAE, which ppo.advantage={self.advantage} does not use"
                       for k in ("value_init", "vf_coef", "vf_clip_range", "gamma", "lam")}
        if self.reward != "rm":
            unused["reward_model"] = f"ppo.reward is {self.reward}, not the reward model"
        if self.prompts and self.eval_prompts > 0:
            unused["eval_max_new_tokens"] = ("with ppo.prompts the held-out evaluation samples ppo.max_new_tokens "
                                             "tokens (the rollout length); it caps the gold evaluation on the "
                                             "built-in world only")
        return {**_unused("ppo.train", self.train, _ppo_train_defaults(), PPO_UNUSED_TRAIN),
                **_unused("ppo", self, PPOConfig(), unused)}


def _dpo_train_defaults() -> TrainConfig:
    # lr: DPO moves the SFT model by small, targeted amounts; the paper tunes at ~10x below the
    # SFT lr (1e-6 vs ~1e-5 for its models), so 1e-4 here against SFT's 1e-3. weight_decay 0:
    # the anchor is the reference model, and decay would pull the weights towards zero instead.
    return TrainConfig(max_steps=200, batch_size=16, lr=1e-4, lr_warmup_steps=20, weight_decay=0.0,
                       eval_every=50, eval_batches=4, log_every=10, ckpt_every=50)


RLHF_POLICY_STARTS = ("last", "sft")  # where each later round's PPO starts (picochat.stages.rounds)
RLHF_LABELERS = ("auto", "people")  # who ranks a later round's answers


@dataclass
class RLHFConfig:
    """Iterated RLHF (InstructGPT gathered new rankings of the RL policy's answers; Llama 2 ran five
    rounds). Round 1 is the label, rm and ppo stages; each later round (the `rounds` stage) ranks K
    answers of the current policy to `prompts` train prompts (label.*: built-in labeler), retrains
    the reward model on every ranking so far (rm.*) and runs PPO again (ppo.*), always with the KL
    to the SFT model."""

    # 1: no later rounds (the rounds stage is left out of the run); raising it later runs on from
    # the rounds already finished
    rounds: int = 1
    prompts: int = 1000  # train prompts ranked per later round, a fresh shuffle of the world's each round
    # last: PPO continues from the previous round's policy | sft: it starts again from the SFT model
    policy_start: str = "last"
    # auto: the built-in labeler | people: the round waits until `prompts` prompts are ranked on the
    # labeling page of `picochat serve` (into <out>/human_labels/round_<r>.jsonl; the stage says how)
    labeler: str = "auto"

    def validate(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rlhf.rounds must be at least 1, got {self.rounds}")
        if self.prompts < 1:
            raise ConfigError(f"rlhf.prompts must be at least 1, got {self.prompts}")
        if self.labeler not in RLHF_LABELERS:
            raise ConfigError(f"rlhf.labeler must be one of {', '.join(RLHF_LABELERS)}, got {self.labeler!r}")
        if self.policy_start not in RLHF_POLICY_STARTS:
            raise ConfigError(f"rlhf.policy_start must be one of {', '.join(RLHF_POLICY_STARTS)}, "
                              f"got {self.policy_start!r}")


@dataclass
class DPOConfig:
    sources: list[str] = field(default_factory=list)  # preference files/dirs; empty = <out>/label/ (+ its test file)
    init: str = ""  # policy start and reference model: a stage of this run or a directory; empty = sft
    beta: float = 0.1  # KL strength: the implicit reward is beta * (log pi - log pi_ref)
    loss: str = "sigmoid"  # sigmoid (DPO) | ipo (Azar et al.)
    label_smoothing: float = 0.0  # cDPO: assumed probability that a label is flipped (sigmoid only)
    max_records: int = 0  # read at most this many records (0 = all)
    val_fraction: float = 0.1  # held-out share of your own data (the built-in labels have a test file)
    seq_len: int = 256  # prompt + response tokens per row
    train: TrainConfig = field(default_factory=_dpo_train_defaults)  # train.batch_size = pairs per micro-batch
    # The after-training evaluation (as sft.eval_*): on the built-in world, gold scores of the DPO
    # model and its reference and the KL between them; with your own dpo.sources, the KL alone, on
    # the held-out preference prompts (so eval_samples is not used).
    eval_prompts: int = 300  # held-out prompts for the gold score and the KL (0 = skip both)
    eval_samples: int = 4  # gold eval: samples per prompt at temperature 1 (mean per sample and best-of-K)
    eval_max_new_tokens: int = 96  # answer length cap for the gold evaluation and the KL samples
    kl_samples: int = 1  # KL to the reference: samples per held-out prompt

    def validate(self) -> None:
        if self.loss not in ("sigmoid", "ipo"):
            raise ConfigError(f"dpo.loss must be sigmoid or ipo, got {self.loss!r}")
        if self.beta <= 0:
            raise ConfigError(f"dpo.beta must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"dpo.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss != "sigmoid":
            raise ConfigError("dpo.label_smoothing applies to loss=sigmoid only; set it to 0 for ipo")
        if self.kl_samples < 1:
            raise ConfigError(f"dpo.kl_samples must be >= 1, got {self.kl_samples}")
        self.train.validate()

    def unused_settings(self) -> Unused:
        if not self.sources or self.eval_prompts <= 0:
            return {}
        return _unused("dpo", self, DPOConfig(), {
            "eval_samples": "with dpo.sources there is no gold scorer: the held-out evaluation is the KL to "
                            "the reference, with dpo.kl_samples samples per prompt"})


@dataclass
class ReportConfig:
    """`picochat report`: every model of the run answers the same held-out prompts, scored by the
    reward model and (on the built-in world) the gold scorer, for the before/after tables."""

    eval_prompts: int = 200  # held-out prompts each model answers (0 = no model comparison)
    max_new_tokens: int = 96
    seed: int = 0  # T=1 sampling seed, the same for every model
    n_examples: int = 8  # conversations shown side by side
    # Torch CPU threads while the models answer. Sampling small batches from small models gains
    # little from more threads, and measured on the 2-core machine with other jobs running, 2
    # threads took 252 s where 1 took 35 s (threads spinning at barriers for the busy core).
    threads: int = 1  # 0 = torch's default
    # Best-of-n curves: the SFT model answers the first best_of_n_prompts held-out prompts
    # best_of_n times (T=1), scored by the reward model and the gold scorer (0 = no curves).
    best_of_n_prompts: int = 100
    best_of_n: int = 16

    def validate(self) -> None:
        if self.eval_prompts < 0 or self.max_new_tokens < 1 or self.n_examples < 0:
            raise ConfigError("report.eval_prompts and report.n_examples must be >= 0, report.max_new_tokens >= 1")
        if self.best_of_n_prompts < 0 or self.best_of_n < 2:
            raise ConfigError("report.best_of_n_prompts must be >= 0 and report.best_of_n >= 2")


BENCHMARK_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "commonsense_qa", "cmmlu", "truthfulqa", "gsm8k")
EVAL_FORMS = ("loglik", "chat")


@dataclass
class EvalConfig:
    """The benchmark card (`picochat eval`, and the report's stage x task table): standard
    benchmarks, scored as lm-evaluation-harness scores them (`picochat.eval.benchmarks`)."""

    tasks: list[str] = field(default_factory=lambda: list(BENCHMARK_TASKS))  # empty = no card
    # A folder of local copies named as in shared/data/eval (arc_easy_test.jsonl.gz, ...); relative
    # paths are taken from data_root. Empty (and no `sources`) = the report skips the card, saying so.
    data_dir: str = ""
    sources: list[str] = field(default_factory=list)  # "task=path or hf:NAME?...", instead of data_dir's file
    limit: int = 500  # the first N items of each task (0 = all)
    shots: int = 0  # few-shot examples before each question (TruthfulQA's prompt has its own)
    # loglik scores every model; chat asks chat models (SFT, PPO, DPO) in their template. Empty =
    # loglik for every model and chat as well for the chat models.
    forms: list[str] = field(default_factory=list)
    batch_size: int = 32  # sequences per forward pass
    max_new_tokens: int = 128  # GSM8K's greedy answer
    precision: str = "fp32"  # fp32 keeps the log-likelihoods comparable with the harness's; or bf16
    threads: int = 0  # torch CPU threads while scoring (0 = torch's default)

    def validate(self) -> None:
        unknown = [t for t in self.tasks if t not in BENCHMARK_TASKS]
        if unknown:
            raise ConfigError(f"eval.tasks: unknown task(s) {unknown}; choose from {list(BENCHMARK_TASKS)}")
        bad_forms = [f for f in self.forms if f not in EVAL_FORMS]
        if bad_forms:
            raise ConfigError(f"eval.forms: unknown form(s) {bad_forms}; choose from {list(EVAL_FORMS)}")
        for entry in self.sources:
            task, sep, spec = entry.partition("=")
            if not sep or task not in BENCHMARK_TASKS or not spec:
                raise ConfigError(f"eval.sources: {entry!r} must read TASK=PATH_OR_HF_SPEC with TASK one of "
                                  f"{list(BENCHMARK_TASKS)}")
        if self.limit < 0 or self.shots < 0 or self.batch_size < 1 or self.max_new_tokens < 1 or self.threads < 0:
            raise ConfigError("eval.limit, eval.shots and eval.threads must be >= 0, eval.batch_size and "
                              "eval.max_new_tokens >= 1")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"eval.precision must be fp32 or bf16, got {self.precision!r}")

    def source_map(self) -> dict[str, str]:
        return dict(entry.split("=", 1) for entry in self.sources)


@dataclass
class RunConfig:
    """Everything one run needs. `model` is the architecture the run pretrains; later stages read
    the architecture from the checkpoint they start from."""

    preset: str = "tiny"
    stages: list[str] = field(default_factory=list)  # the stages this run has, in order; empty = all
    data_root: str = ""  # relative paths in sources/prompts are taken from here (empty = the working directory)
    # `picochat run` trains DPO beside PPO, one thread each in two processes, on a CPU with two or
    # more cores and 8 GB free (picochat/run/side_by_side.py); false = one stage after the other
    side_by_side: bool = True
    world: WorldConfig = field(default_factory=WorldConfig)
    tokenizer: TokenizerStageConfig = field(default_factory=TokenizerStageConfig)
    # The architecture pretraining builds. model.vocab_size is the tokenizer's (its size rounded up
    # to a multiple of 64; set tokenizer.vocab_size to change it): left at its default it is
    # replaced, with a line saying so, and any other value must equal it. model.head must be lm.
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    chat: ChatTasksConfig = field(default_factory=ChatTasksConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    rm: RMConfig = field(default_factory=RMConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    rlhf: RLHFConfig = field(default_factory=RLHFConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        """Plain dicts and lists (tuples become lists), ready for YAML/JSON."""
        return _as_lists(dataclasses.asdict(self))



# ---------------------------------------------------------------------------------------------
# Building a config from layers of dicts


def _parse_scalar(text: str) -> Any:
    """Parse a command-line value: int, float (including `3e-4`, which YAML reads as a string),
    bool, null, lists in YAML flow style, else the string itself."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _as_lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _as_lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check/convert `value` to the field type `annotation`, raising ConfigError naming `key`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], key)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0] if args else Any, key) for v in value]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return _as_tuples(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _apply(obj: Any, updates: dict, prefix: str = "") -> None:
    """Apply a nested dict of updates onto dataclass `obj` in place, type-checked."""
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in updates.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise ConfigError(f"unknown config key {key!r} (known here: {', '.join(sorted(names))})")
        current = getattr(obj, k)
        if dataclasses.is_dataclass(current):
            if not isinstance(v, dict):
                raise ConfigError(f"{key}: expected a section (mapping), got {v!r}")
            if type(current).__dataclass_params__.frozen:
                merged = dataclasses.asdict(current)
                merged.update(v)
                probe = type(current)()
                extra = set(v) - {f.name for f in dataclasses.fields(probe)}
                if extra:
                    raise ConfigError(f"unknown config key {key}.{sorted(extra)[0]!r}")
                sub_hints = typing.get_type_hints(type(current))
                merged = {n: _coerce(val, sub_hints[n], f"{key}.{n}") for n, val in merged.items()}
                setattr(obj, k, type(current)(**merged))
            else:
                _apply(current, v, prefix=f"{key}.")
        else:
            setattr(obj, k, _coerce(v, hints[k], key))


def _dotted_to_nested(overrides: dict[str, Any]) -> dict:
    nested: dict = {}
    for dotted, value in overrides.items():
        node = nested
        parts = dotted.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted!r} conflicts with another override")
        node[parts[-1]] = value
    return nested


def parse_overrides(items: list[str], default_section: str | None = None) -> dict[str, Any]:
    """Turn `["train.lr=3e-4", "model.d_model=256"]` into a dotted dict.

    A key whose first part is not a top-level section of RunConfig is taken as relative to
    `default_section`, so `picochat pretrain train.lr=3e-4` means `pretrain.train.lr`.
    """
    top = {f.name for f in dataclasses.fields(RunConfig)}
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.lr=3e-4)")
        key, _, raw = item.partition("=")
        key = key.strip()
        if key.split(".")[0] not in top and default_section:
            key = f"{default_section}.{key}"
        out[key] = _parse_scalar(raw.strip())
    return out


def load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def build_config(
    preset: str | None = "tiny",
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    base_file: str | Path | None = None,
) -> RunConfig:
    """defaults < preset (or `base_file`, a run's saved config.yaml) < config file < overrides."""
    cfg = RunConfig()
    if base_file:
        _apply(cfg, load_yaml(Path(base_file)))
    elif preset:
        path = PRESETS_DIR / f"{preset}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown preset {preset!r}; available: {', '.join(available_presets())}")
        _apply(cfg, load_yaml(path))
        cfg.preset = preset
    if config_file:
        _apply(cfg, load_yaml(Path(config_file)))
    if overrides:
        _apply(cfg, _dotted_to_nested(overrides))
    cfg.pretrain.train.validate()
    cfg.sft.train.validate()
    cfg.label.validate()
    cfg.rm.validate()
    cfg.ppo.validate()
    cfg.dpo.validate()
    cfg.rlhf.validate()
    cfg.report.validate()
    cfg.eval.validate()
    _check_fractions(cfg)
    _check_rounds(cfg)
    _resolve_data_root(cfg)
    try:
        cfg.model.validate()
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    if cfg.model.head != "lm":
        raise ConfigError(f"model.head={cfg.model.head!r}: pretraining builds a language model (head lm); the "
                          "reward-model stage gives its copy the scalar head itself. Remove the key")
    _check_unused(cfg, base_file)
    return cfg


def _check_rounds(cfg: RunConfig) -> None:
    """Later RLHF rounds rank the policy's answers with the built-in labeler and train a reward
    model for PPO: they need the built-in world's prompts and rankings and PPO on the reward model."""
    if cfg.rlhf.rounds == 1:
        return
    if cfg.ppo.reward != "rm":
        raise ConfigError(f"rlhf.rounds={cfg.rlhf.rounds} retrains the reward model each round, and ppo.reward is "
                          f"{cfg.ppo.reward!r}: set ppo.reward=rm or rlhf.rounds=1")
    own = [key for key, value in (("rm.sources", cfg.rm.sources), ("ppo.prompts", cfg.ppo.prompts),
                                  ("rm.init", cfg.rm.init), ("ppo.init", cfg.ppo.init),
                                  ("ppo.reward_model", cfg.ppo.reward_model)) if value]
    if own:
        raise ConfigError(f"rlhf.rounds={cfg.rlhf.rounds} runs on the built-in world from this run's SFT model (the "
                          f"built-in labeler ranks the policy's answers), and {own[0]} is set: leave it empty or "
                          "set rlhf.rounds=1")


def unused_settings(cfg: RunConfig) -> Unused:
    """Every setting set away from its default that the stage it names does not read."""
    return {**cfg.sft.unused_settings(), **cfg.rm.unused_settings(), **cfg.ppo.unused_settings(),
            **cfg.dpo.unused_settings()}


def _check_unused(cfg: RunConfig, base_file: str | Path | None) -> None:
    """Every setting is read by the code it names, or rejected with a message that says why and
    what to do. A run started before these checks existed may have saved such a setting in its
    config.yaml: continuing it keeps the value (so its finished stages stay up to date, their
    fingerprints unchanged) and says that it is not used."""
    unused = unused_settings(cfg)
    if not unused:
        return
    saved = {}
    if base_file:
        saved_cfg = RunConfig()
        _apply(saved_cfg, load_yaml(Path(base_file)))
        saved = unused_settings(saved_cfg)
    for key, (value, default, why) in unused.items():
        if key in saved and saved[key][0] == value:
            print(f"[config] note: {key}={value!r} in {base_file} is not used: {why}", file=sys.stderr)
        else:
            raise ConfigError(f"{key}={value!r} is not used: {why}; remove the key (or leave it at its "
                              f"default, {default!r})")


def _check_fractions(cfg: RunConfig) -> None:
    """Shares and probabilities lie in their interval: a held-out share of -1 or 2 would train on
    no data or evaluate on none (val loss nan), and would be saved into the run's config.yaml."""
    held_out = {"pretrain.val_fraction": cfg.pretrain.val_fraction, "sft.val_fraction": cfg.sft.val_fraction,
                "rm.val_fraction": cfg.rm.val_fraction, "dpo.val_fraction": cfg.dpo.val_fraction}
    for key, value in held_out.items():
        if not 0 < value < 1:
            raise ConfigError(f"{key} is the held-out share of the data and must be between 0 and 1 "
                              f"(exclusive), got {value}")
    unit = {"label.flip_prob": cfg.label.flip_prob}
    for section in ("pretrain", "sft", "rm", "ppo", "dpo"):
        train = getattr(cfg, section).train
        unit[f"{section}.train.min_lr_ratio"] = train.min_lr_ratio
        unit[f"{section}.train.wsd_decay_fraction"] = train.wsd_decay_fraction
    for key, value in unit.items():
        if not 0 <= value <= 1:
            raise ConfigError(f"{key} must be between 0 and 1, got {value}")


def _resolve_data_root(cfg: RunConfig) -> None:
    """Join relative local paths of every `sources`/`prompts` list onto `data_root` (made absolute,
    so resolving twice changes nothing). Hugging Face names (`hf:...`) are left alone. The benchmark
    folder `eval.data_dir` is made absolute either way, so a saved config still finds it."""
    if cfg.eval.data_dir:
        data_dir = Path(cfg.eval.data_dir).expanduser()
        cfg.eval.data_dir = str((Path(cfg.data_root or ".").expanduser() / data_dir).resolve())
    if not cfg.data_root:
        return
    root = Path(cfg.data_root).expanduser().resolve()
    cfg.data_root = str(root)

    def resolve(specs: list[str]) -> list[str]:
        return [s if s.startswith("hf:") or Path(s).expanduser().is_absolute() else str(root / s) for s in specs]

    for section in (cfg.tokenizer, cfg.pretrain, cfg.sft, cfg.rm, cfg.dpo):
        section.sources = resolve(section.sources)
    cfg.ppo.prompts = resolve(cfg.ppo.prompts)
    cfg.eval.sources = [f"{task}={resolve([spec])[0]}" for task, spec in cfg.eval.source_map().items()]


def save_config(cfg: RunConfig, path: Path) -> None:
    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))
