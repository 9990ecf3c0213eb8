"""The reward-model stage: train a scalar head on the K-wise rankings and fit the score
normalisation (see picochat.train.reward for batching, losses and metrics)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from picochat.config import RunConfig
from picochat.core import distributed
from picochat.core.checkpoint import write_model_dir
from picochat.core.distributed import rank_share
from picochat.core.precision import autocast, default_device
from picochat.core.tokenizer import Tokenizer
from picochat.layout import load_model, model_location
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
    out = Path(out)
    rcfg = cfg.rm
    stage_dir = out / "rm"
    init_dir = model_location(rcfg.init, "sft", out)
    device = default_device()
    t0 = time.perf_counter()
    model, meta = load_model(init_dir, device)
    tokenizer_file = Path(meta["model_dir"]) / "tokenizer.json"
    tokenizer = Tokenizer.load(tokenizer_file)
    torch.manual_seed(rcfg.train.seed)
    model.set_head("scalar")
    torch.nn.init.normal_(model.score.weight, std=rcfg.head_init_std)  # small: start from no opinion
    seq_len = min(rcfg.seq_len, model.cfg.max_seq_len)

    train_records, test_records, problems = load_preference_splits(out, rcfg.sources, rcfg.max_records,
                                                                   rcfg.val_fraction)
    for p in problems[:5]:
        print(f"[rm] skipped: {p}")
    if problems:
        print(f"[rm] {len(problems)} invalid record(s) skipped in total")
    kind = rcfg.loss
    if kind == "auto":
        kind = "mse" if train_records[0].ranking is None else "pairwise"
    train = [EncodedRecord(r, tokenizer, seq_len) for r in train_records]
    test = [EncodedRecord(r, tokenizer, seq_len) for r in test_records]
    if kind in ("pairwise", "best_of_k"):
        train = [r for r in train if r.pairs]  # prompts whose K answers all tied teach nothing
    if not train:
        raise ValueError("no usable training records for the reward model (every prompt's answers tied?)")
    n_cut = sum(r.n_cut for r in train)
    print(f"[rm] {len(train):,} train / {len(test):,} held-out prompts, "
          f"{sum(len(r.rows) for r in train):,} responses, {sum(len(r.pairs) for r in train):,} pairs, loss={kind}"
          + (f"; {n_cut} responses cut to {seq_len} tokens" if n_cut else ""))

    tcfg = rcfg.train
    rank, world = distributed.rank(), distributed.world_size()

    def get_batch(step: int, micro: int) -> dict:
        rng = np.random.default_rng([tcfg.seed, step, micro])
        # prompts per micro-batch; under torchrun this process's share of batch_size × world_size
        idx = rank_share(rng.integers(0, len(train), size=tcfg.batch_size * world), tcfg.batch_size, rank)
        return collate([train[i] for i in idx], tokenizer.pad_id)

    def evaluate(m) -> dict:
        if not test:
            return {}
        scores = score_records(m, test, tokenizer.pad_id)
        metrics = {**pair_metrics(test, scores), **scalar_metrics(test, scores, kind)}
        return {f"val_{k}": v for k, v in metrics.items() if isinstance(v, float)}

    trainer = Trainer(
        model, tcfg, stage_dir, get_batch=get_batch, loss_fn=lambda m, b: reward_loss(m, b, kind),
        evaluate=evaluate, tokenizer_file=tokenizer_file, device=device, stage="rm", show_progress=show_progress,
        # ranking losses average over prompts (the same number in every micro-batch); scalar ones over rows
        loss_weight=(lambda b: b["input_ids"].shape[0]) if kind in ("mse", "bce") else None,
    )
    result, model = trainer.fit_to_end()
    if model is None:  # under torchrun, rank 0 alone fits the normalisation and writes the model
        return {}

    model.eval()
    with autocast(trainer.precision, device):
        train_scores = score_records(model, train[: rcfg.normalize_on], tokenizer.pad_id)
        test_scores = score_records(model, test, tokenizer.pad_id) if test else []
    gain, bias = fit_normalization(train_scores, fit_gain=rcfg.normalize == "bias_gain")
    if rcfg.normalize == "none":
        gain, bias = 1.0, 0.0
    write_model_dir(stage_dir, model, tokenizer_file, {
        "stage": "rm", "step": result.step, "init": str(init_dir), "loss": kind,
        "reward_normalization": {"gain": gain, "bias": bias, "fitted_on": "SFT samples of the training prompts"},
    })
    normalized_test = [[gain * x + bias for x in s] for s in test_scores]
    held_out = pair_metrics(test, normalized_test) if test else {}
    summary = {
        "stage": "rm",
        "init": str(init_dir),
        "loss": kind,
        "n_train_prompts": len(train),
        "n_test_prompts": len(test),
        "n_invalid_records": len(problems),
        **result.figures(),
        **held_out,
        **(best_of_n_gold(test, test_scores) if test else {}),
        **scalar_metrics(test, test_scores, kind),
        "calibration": calibration_table(test, normalized_test) if test else [],
        "normalization": {"gain": gain, "bias": bias},
        "wall_s": time.perf_counter() - t0,
    }
    return summary
