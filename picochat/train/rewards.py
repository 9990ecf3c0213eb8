"""The rewards PPO can optimise, looked up by name (`ppo.reward`).

A reward function scores a batch of answers: (prompts, texts, finished) -> one float per answer,
on the scale of the reward model's normalised score (mean 0 and std 1 over the SFT model's
samples), so the KL coefficient, the no-EOS penalty and the learning rate mean the same whichever
reward is used.

- `rm`: the reward model trained on the rankings (InstructGPT).
- `gold`: the built-in world's gold scorer itself, a perfect reward. It shows what the RL can make
  of a reward that knows everything, and so separates the RL's ceiling from the reward model's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from picochat.config import PPO_REWARDS, PPOConfig
from picochat.core.prompt import Prompt, reward_input
from picochat.layout import model_location, world_file
from picochat.reward_model import AnyRewardModel, RewardEnsemble, load_reward_model
from picochat.world import GoldScorer, read_world

RewardFunction = Callable[[list[Prompt], list[str], list[bool]], list[float]]

# The gold score of the tiny preset's SFT samples (T=1) has mean ≈0.45 and std ≈0.25: gold scores
# are put on the RM's normalised scale with these, (gold − 0.45) / 0.25.
GOLD_SFT_MEAN = 0.45
GOLD_SFT_STD = 0.25


def rm_reward(reward_model: AnyRewardModel) -> RewardFunction:
    def score(prompts: list[Prompt], texts: list[str], finished: list[bool]) -> list[float]:
        inputs = [reward_input(p, t) for p, t in zip(prompts, texts)]
        return reward_model.score([p for p, _ in inputs], [r for _, r in inputs], finished)

    return score


def gold_reward(gold: GoldScorer) -> RewardFunction:
    def score(prompts: list[Prompt], texts: list[str], finished: list[bool]) -> list[float]:
        return [(gold.score(p, t, finished=f) - GOLD_SFT_MEAN) / GOLD_SFT_STD
                for p, t, f in zip(prompts, texts, finished)]

    return score


def _rm(pcfg: PPOConfig, out: Path, device: torch.device) -> tuple[RewardFunction, AnyRewardModel | None]:
    reward_model = load_reward_model(model_location(pcfg.reward_model, "rm", out), device)
    for member in reward_model.members if isinstance(reward_model, RewardEnsemble) else [reward_model]:
        member.model.requires_grad_(False).eval()
    return rm_reward(reward_model), reward_model


def _gold(pcfg: PPOConfig, out: Path, device: torch.device) -> tuple[RewardFunction, AnyRewardModel | None]:
    if not world_file(out).exists() or pcfg.prompts:
        raise ValueError("ppo.reward=gold needs the built-in world's prompts and gold scorer: it is not "
                         "available with your own ppo.prompts; use ppo.reward=rm")
    return gold_reward(GoldScorer(read_world(world_file(out))[0])), None


# name -> builder; config.PPO_REWARDS lists the same names, so a typo is refused before a stage starts
REWARDS = {"rm": _rm, "gold": _gold}
assert tuple(REWARDS) == PPO_REWARDS


def build_reward(pcfg: PPOConfig, out: Path, device: torch.device) -> tuple[RewardFunction, AnyRewardModel | None]:
    """(the reward function `ppo.reward` names, the reward model when it is one)."""
    return REWARDS[pcfg.reward](pcfg, out, device)
