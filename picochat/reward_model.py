"""Reward models: how a (prompt, response) pair becomes a scalar, and how scores are normalised.

A reward model is a GPT whose LM head is replaced by a scalar head (`GPT.set_head("scalar")`). It
reads the conversation rendered with the chat template and its score is the head's output at the
last real token of the response: `<|im_end|>` when the response finished, its last token when it
was cut off (so the model can tell an answer that never ended). Raw-text inputs (scalar-label
data such as movie reviews) are `<|endoftext|>` + text.

After training, a gain and bias are fitted so that SFT samples score mean 0 and std 1; they are
stored in the checkpoint's config.json and applied by every consumer through `RewardModel`.

An ensemble (`rm.ensemble=M`, Coste et al. 2024) is M reward models trained from different seeds:
the stage's model directory holds the first, `members/<i>/` the others, and `ensemble.json` (written
last) how their normalised scores combine into one conservative reward. `load_reward_model` gives
a `RewardEnsemble` there and a `RewardModel` elsewhere; both score the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from picochat.config import RM_ENSEMBLE_COMBINES
from picochat.core import distributed
from picochat.core.batching import right_pad
from picochat.core.chat import render_chat
from picochat.core.model import GPT
from picochat.core.tokenizer import Tokenizer
from picochat.layout import load_model, model_tokenizer, resolve_model


def reward_input_ids(tokenizer: Tokenizer, prompt: list[dict] | None, response: str, finished: bool = True,
                     max_len: int | None = None) -> tuple[list[int], bool]:
    """Token ids a reward model reads for one response, and whether they were cut to max_len."""
    if prompt is None:
        ids = [tokenizer.eot_id] + tokenizer.encode(response)
    else:
        ids, _ = render_chat(tokenizer, list(prompt) + [{"role": "assistant", "content": response}])
        ids = ids[:-len(tokenizer.encode("\n"))]  # drop the separator after <|im_end|>: the score sits on it
        if not finished:
            ids = ids[:-1]  # no <|im_end|>: the response was cut off
    cut = max_len is not None and len(ids) > max_len
    if cut:
        # Keep the end: the score is read at the last token of the response, and two responses to
        # the same long prompt must still differ (cutting the end would leave identical prefixes).
        ids = ids[-max_len:]
    return ids, cut


def pad_right(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (N, T), last_index (N,)): the rows right-padded, and the index of each row's last
    real token, where its score is read."""
    return right_pad(rows, pad_id), torch.tensor([len(r) - 1 for r in rows], dtype=torch.long)


def scores_at(model: torch.nn.Module, input_ids: torch.Tensor, last_index: torch.Tensor,
              length_groups: int = 4) -> torch.Tensor:
    """Scalar-head output at each row's last real token: (N,). Right padding needs no attention
    mask: causal attention never lets a real token see the pads after it.

    The rows run in up to `length_groups` forwards of rows of similar length, each cut to its own
    longest row: K answers to a batch of prompts are mostly short with a few long ones (stories),
    and one forward would pay the longest length for every row (on the built-in K=8 labels the
    reward-model stage ran 2.1x faster in groups). Several forwards of a DDP/FSDP-wrapped model
    before one backward are not what those wrappers expect, so under torchrun a training forward
    stays one."""
    n = input_ids.shape[0]
    groups = min(length_groups, n)
    if groups <= 1 or (torch.is_grad_enabled() and distributed.is_distributed()):
        per_position = model(input_ids)  # (N, T)
        return per_position.float().gather(1, last_index[:, None]).squeeze(1)
    order = torch.argsort(last_index)
    pieces = []
    for rows in order.tensor_split(groups):
        last = last_index[rows]
        per_position = model(input_ids[rows, : int(last.max()) + 1])
        pieces.append(per_position.float().gather(1, last[:, None]).squeeze(1))
    return torch.cat(pieces)[torch.argsort(order)]  # back to row order


@dataclass
class RewardModel:
    """A scalar-head GPT plus its normalisation: reward = gain * raw + bias."""

    model: GPT
    tokenizer: Tokenizer
    gain: float = 1.0
    bias: float = 0.0

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> RewardModel:
        model, meta = load_model(path, device)
        if model.cfg.head != "scalar":
            raise ValueError(f"{meta['model_dir']} is not a reward model (its head is {model.cfg.head!r}); "
                             "train one with `picochat rm`")
        norm = meta.get("reward_normalization", {})
        tokenizer = model_tokenizer(meta)
        model.eval()
        return cls(model, tokenizer, float(norm.get("gain", 1.0)), float(norm.get("bias", 0.0)))

    @torch.no_grad()
    def score(self, prompts: list[list[dict] | None], responses: list[str], finished: list[bool] | None = None,
              batch_size: int = 32, normalized: bool = True) -> list[float]:
        finished = finished or [True] * len(responses)
        device = next(self.model.parameters()).device
        rows = [reward_input_ids(self.tokenizer, p, r, f, self.model.cfg.max_seq_len)[0]
                for p, r, f in zip(prompts, responses, finished)]
        out: list[float] = []
        for start in range(0, len(rows), batch_size):
            ids, last = pad_right(rows[start : start + batch_size], self.tokenizer.pad_id)
            raw = scores_at(self.model, ids.to(device), last.to(device))
            out.extend((raw * self.gain + self.bias if normalized else raw).tolist())
        return out


ENSEMBLE_FILE = "ensemble.json"  # beside the first member's model: the members and how their scores combine


def combine_member_scores(scores: torch.Tensor, combine: str, std_coef: float = 1.0) -> torch.Tensor:
    """(M, N) normalised member scores -> (N,) one score per response.

    mean_minus_std: the mean less std_coef x the members' (population) standard deviation, so a
    response the members disagree on scores lower: the uncertainty-weighted reward of Coste et al.
    (2024), which stops over-optimisation where the reward model is unsure. min: the most
    pessimistic member (their worst-case optimisation). mean: no penalty."""
    if combine == "mean":
        return scores.mean(0)
    if combine == "min":
        return scores.min(0).values
    if combine == "mean_minus_std":
        return scores.mean(0) - std_coef * scores.std(0, correction=0)
    raise ValueError(f"unknown ensemble combine {combine!r}; expected one of {', '.join(RM_ENSEMBLE_COMBINES)}")


@dataclass
class RewardEnsemble:
    """M reward models read as one: each member's normalised score, combined (`combine`), then put
    back on the normalised scale (gain, bias: SFT samples score mean 0 and std 1 again), so PPO's KL
    coefficient means what it means with one reward model."""

    members: list[RewardModel]
    combine: str
    std_coef: float = 1.0
    gain: float = 1.0
    bias: float = 0.0

    @property
    def model(self) -> GPT:  # the first member: the value model's start and the stage's own model
        return self.members[0].model

    @property
    def tokenizer(self) -> Tokenizer:
        return self.members[0].tokenizer

    def member_scores(self, prompts: list[list[dict] | None], responses: list[str],
                      finished: list[bool] | None = None, batch_size: int = 32) -> torch.Tensor:
        """(M, N) normalised scores, one row per member."""
        return torch.tensor([m.score(prompts, responses, finished, batch_size) for m in self.members])

    def score(self, prompts: list[list[dict] | None], responses: list[str], finished: list[bool] | None = None,
              batch_size: int = 32, normalized: bool = True) -> list[float]:
        members = self.member_scores(prompts, responses, finished, batch_size)
        combined = combine_member_scores(members, self.combine, self.std_coef)
        return (combined * self.gain + self.bias if normalized else combined).tolist()


AnyRewardModel = RewardModel | RewardEnsemble  # what load_reward_model gives: one model or an ensemble


def load_reward_model(path: str | Path, device: torch.device | str = "cpu") -> AnyRewardModel:
    """The reward model of a model setting: a `RewardEnsemble` when its directory holds one (see
    ENSEMBLE_FILE), else a `RewardModel`."""
    first = RewardModel.load(path, device)
    spec_file = resolve_model(path) / ENSEMBLE_FILE
    if not spec_file.exists():
        return first
    spec = json.loads(spec_file.read_text())
    members = [first] + [RewardModel.load(spec_file.parent / m, device) for m in spec["members"]]
    return RewardEnsemble(members, spec["combine"], float(spec["std_coef"]), float(spec["gain"]), float(spec["bias"]))
