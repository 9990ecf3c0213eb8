"""The reward-model stage: train a scalar head on the K-wise rankings and fit the score
normalisation (see picochat.train.reward for batching, losses and metrics); with rm.ensemble=M,
M of them from different seeds and how their scores combine (picochat.reward_model)."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from picochat.config import RMConfig, RunConfig, TrainConfig
from picochat.core import distributed
from picochat.core.checkpoint import TOKENIZER_FILE, read_model_config, write_model_dir
from picochat.core.distributed import rank_share
from picochat.core.io import atomic_write_json
from picochat.core.precision import autocast, default_device
from picochat.core.tokenizer import Tokenizer
from picochat.layout import load_model_and_tokenizer, model_location, resolve_model
from picochat.reward_model import ENSEMBLE_FILE, combine_member_scores
from picochat.train.reward import (
    EncodedRecord,
    best_of_n_gold,
    calibration_table,
    collate,
    fit_normalization,
    load_preference_splits,
    pair_metrics,
    reward_loss,
    scalar_metrics,
    score_records,
)
from picochat.train.trainer import Trainer


def run(cfg: RunConfig, out: Path, show_progress: bool = True) -> dict:
    return train_reward_model(cfg, Path(out), Path(out) / "rm", show_progress)


def train_reward_model(cfg: RunConfig, out: Path, stage_dir: Path, show_progress: bool = True,
                       later_labels: tuple[Path, ...] = ()) -> dict:
    """Train the reward model (or ensemble) into stage_dir on the run's rankings, those of later
    RLHF rounds (`later_labels`, preference files) after them, and return its summary."""
    rcfg = cfg.rm
    init_dir = model_location(rcfg.init, "sft", out)
    device = default_device()
    t0 = time.perf_counter()
    init_model_dir = resolve_model(init_dir)
    tokenizer = Tokenizer.load(init_model_dir / TOKENIZER_FILE)
    seq_len = min(rcfg.seq_len, read_model_config(init_model_dir)[0].max_seq_len)
    data = load_rm_data(rcfg, out, tokenizer, seq_len, later_labels)
    members = []
    for i in range(rcfg.ensemble):
        if rcfg.ensemble > 1:
            print(f"[rm] ensemble member {i + 1} of {rcfg.ensemble} (seed {rcfg.train.seed + i})")
        members.append(_train_member(rcfg, i, init_dir, data, member_dir(stage_dir, i), device, show_progress))
    if not distributed.is_main():  # under torchrun, rank 0 alone fits the normalisation and writes the model
        return {}

    first = members[0]
    summary = {
        "stage": "rm",
        "init": str(init_dir),
        "loss": data.kind,
        "n_train_prompts": len(data.train),
        "n_test_prompts": len(data.test),
        "n_invalid_records": len(data.problems),
        **first["figures"],
    }
    if rcfg.ensemble == 1:
        held_out, gain, bias = first["held_out"], first["gain"], first["bias"]
    else:
        test_scores, gain, bias = _write_ensemble(rcfg, stage_dir, members)
        held_out = _held_out_metrics(data, test_scores, gain, bias)
        summary["members"] = [{"seed": m["seed"], **_member_figures(m["held_out"])} for m in members]
        summary["ensemble"] = {"combine": rcfg.ensemble_combine, "std_coef": rcfg.ensemble_std_coef}
        summary["train_wall_s"] = sum(m["figures"]["train_wall_s"] for m in members)
    return {**summary, **held_out, "normalization": {"gain": gain, "bias": bias}, "wall_s": time.perf_counter() - t0}


def member_dir(stage_dir: Path, index: int) -> Path:
    """Where ensemble member `index` lives: the stage's own model directory for the first."""
    return stage_dir if index == 0 else stage_dir / "members" / str(index)


MEMBER_FILE = "member.json"  # a finished member's figures and scores, written after its model


def _train_member(rcfg: RMConfig, index: int, init_dir: Path, data: RMData, out_dir: Path, device,
                  show_progress: bool) -> dict | None:
    """Train one reward model (seed train.seed + index), fit its normalisation and write it to
    out_dir; returns its figures and its raw scores of the normalisation and held-out prompts (None
    in the other processes under torchrun). A member finished before the stage was killed is read
    back, not retrained."""
    done = out_dir / MEMBER_FILE
    if done.exists():
        print(f"[rm] member {index + 1} already trained, reusing {out_dir}")
        return json.loads(done.read_text())
    tcfg = dataclasses.replace(rcfg.train, seed=rcfg.train.seed + index)
    model, tokenizer, meta = load_model_and_tokenizer(init_dir, device)
    tokenizer_file = Path(meta["model_dir"]) / TOKENIZER_FILE  # copied into the model directories written
    torch.manual_seed(tcfg.seed)
    model.set_head("scalar")
    torch.nn.init.normal_(model.score.weight, std=rcfg.head_init_std)  # small: start from no opinion
    trainer = _make_trainer(tcfg, data, model, tokenizer.pad_id, out_dir, tokenizer_file, device, show_progress)
    result, model = trainer.fit_to_end()
    if model is None:
        return None
    model.eval()
    with autocast(trainer.precision, device):
        train_scores = score_records(model, data.train[: rcfg.normalize_on], tokenizer.pad_id)
        test_scores = score_records(model, data.test, tokenizer.pad_id) if data.test else []
    gain, bias = _normalization(rcfg, train_scores)
    write_model_dir(out_dir, model, tokenizer_file, {
        "stage": "rm", "step": result.step, "init": str(init_dir), "loss": data.kind, "seed": tcfg.seed,
        "reward_normalization": {"gain": gain, "bias": bias, "fitted_on": "SFT samples of the training prompts"},
    })
    member = {"seed": tcfg.seed, "figures": result.figures(), "gain": gain, "bias": bias,
              "train_scores": train_scores, "test_scores": test_scores,
              "held_out": _held_out_metrics(data, test_scores, gain, bias)}
    atomic_write_json(done, member)
    return member


def _member_figures(held_out: dict) -> dict:
    """Of a member's held-out metrics, those the report shows for each ensemble member."""
    return {k: v for k, v in held_out.items()
            if k in ("pair_accuracy", "gold_pair_accuracy") or (k.startswith("best_of_") and k.endswith("_gain"))}


def _write_ensemble(rcfg: RMConfig, stage_dir: Path, members: list[dict]) -> tuple[list[list[float]], float, float]:
    """Combine the members' normalised scores (rm.ensemble_combine), fit the combined score's own
    normalisation on the training prompts' SFT samples, and write ensemble.json beside the first
    member (every consumer then reads the ensemble). Returns the combined held-out scores and
    that normalisation."""
    def combined(key: str) -> list[list[float]]:
        per_record = zip(*[m[key] for m in members])  # each record's scores, one list per member
        return [combine_member_scores(torch.tensor([[m["gain"] * x + m["bias"] for x in s]
                                                    for m, s in zip(members, scores)]),
                                      rcfg.ensemble_combine, rcfg.ensemble_std_coef).tolist()
                for scores in per_record]

    gain, bias = _normalization(rcfg, combined("train_scores"))
    atomic_write_json(stage_dir / ENSEMBLE_FILE, {
        "members": [str(member_dir(stage_dir, i).relative_to(stage_dir)) for i in range(1, len(members))],
        "combine": rcfg.ensemble_combine, "std_coef": rcfg.ensemble_std_coef, "gain": gain, "bias": bias,
        "seeds": [m["seed"] for m in members]})
    return combined("test_scores"), gain, bias


@dataclass
class RMData:
    train: list[EncodedRecord]  # prompts with something to learn (for ranking losses: a ranked pair)
    test: list[EncodedRecord]  # held-out prompts
    kind: str  # the loss, `rm.loss` with auto resolved: pairwise (rankings) or mse (scalar labels)
    problems: list[str]  # invalid records skipped ("file, line N: why")


def load_rm_data(rcfg: RMConfig, out: Path, tokenizer: Tokenizer, seq_len: int,
                 later_labels: tuple[Path, ...] = ()) -> RMData:
    """The preference records as token rows, split into train and held-out, and the loss they
    call for; says on stdout what was read and skipped."""
    train_records, test_records, problems = load_preference_splits(out, rcfg.sources, rcfg.max_records,
                                                                   rcfg.val_fraction, later_labels=later_labels)
    for p in problems[:5]:
        print(f"[rm] skipped: {p}")
    if problems:
        print(f"[rm] {len(problems)} invalid record(s) skipped in total")
    kind = rcfg.loss
    if kind == "auto":
        kind = "mse" if train_records[0].ranking is None else "pairwise"
    train = [EncodedRecord(r, tokenizer, seq_len) for r in train_records]
    test = [EncodedRecord(r, tokenizer, seq_len) for r in test_records]
    if kind in ("pairwise", "plackett_luce", "best_of_k"):
        train = [r for r in train if r.pairs]  # prompts whose K answers all tied teach nothing
    if not train:
        raise ValueError("no usable training records for the reward model (every prompt's answers tied?)")
    n_cut = sum(r.n_cut for r in train)
    print(f"[rm] {len(train):,} train / {len(test):,} held-out prompts, "
          f"{sum(len(r.rows) for r in train):,} responses, {sum(len(r.pairs) for r in train):,} pairs, loss={kind}"
          + (f"; {n_cut} responses cut to {seq_len} tokens" if n_cut else ""))
    return RMData(train, test, kind, problems)


def _make_trainer(tcfg: TrainConfig, data: RMData, model, pad_id: int, stage_dir: Path, tokenizer_file: Path,
                  device, show_progress: bool) -> Trainer:
    """The shared trainer with the reward model's batches (whole prompts: all K answers of each),
    loss and held-out metrics."""
    kind = data.kind
    rank, world = distributed.rank(), distributed.world_size()

    def get_batch(step: int, micro: int) -> dict:
        rng = np.random.default_rng([tcfg.seed, step, micro])
        # prompts per micro-batch; under torchrun this process's share of batch_size × world_size
        idx = rank_share(rng.integers(0, len(data.train), size=tcfg.batch_size * world), tcfg.batch_size, rank)
        return collate([data.train[i] for i in idx], pad_id)

    def evaluate(m) -> dict:
        if not data.test:
            return {}
        scores = score_records(m, data.test, pad_id)
        metrics = {**pair_metrics(data.test, scores), **scalar_metrics(data.test, scores, kind)}
        return {f"val_{k}": v for k, v in metrics.items() if isinstance(v, float)}

    return Trainer(
        model, tcfg, stage_dir, get_batch=get_batch, loss_fn=lambda m, b: reward_loss(m, b, kind),
        evaluate=evaluate, tokenizer_file=tokenizer_file, device=device, stage="rm", show_progress=show_progress,
        # ranking losses average over prompts (the same number in every micro-batch); scalar ones over rows
        loss_weight=(lambda b: b["input_ids"].shape[0]) if kind in ("mse", "bce") else None,
    )


def _normalization(rcfg: RMConfig, train_scores: list[list[float]]) -> tuple[float, float]:
    """(gain, bias) applied to every raw score from now on (`rm.normalize`)."""
    gain, bias = fit_normalization(train_scores, fit_gain=rcfg.normalize == "bias_gain")
    if rcfg.normalize == "none":
        gain, bias = 1.0, 0.0
    return gain, bias


def _held_out_metrics(data: RMData, test_scores: list[list[float]], gain: float, bias: float) -> dict:
    """Pair accuracy (normalised scores), best-of-n gold gains, scalar-label fit and calibration
    on the held-out prompts."""
    normalized_test = [[gain * x + bias for x in s] for s in test_scores]
    test = data.test
    return {
        **(pair_metrics(test, normalized_test) if test else {}),
        **(best_of_n_gold(test, test_scores) if test else {}),
        **scalar_metrics(test, test_scores, data.kind),
        "calibration": calibration_table(test, normalized_test) if test else [],
    }
