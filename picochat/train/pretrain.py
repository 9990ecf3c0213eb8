"""Pretraining: next-token prediction on token shards, with loss, perplexity and bits per byte."""

from __future__ import annotations

import math

import numpy as np
import torch

from picochat.config import SampleConfig
from picochat.core import distributed
from picochat.core.distributed import rank_share
from picochat.core.generate import generate
from picochat.core.model import GPT, lm_loss
from picochat.core.precision import autocast
from picochat.core.tokenizer import Tokenizer
from picochat.data.shards import ShardMeta


def random_windows(tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, step: int, micro: int,
                   rank: int = 0, world_size: int = 1) -> dict:
    """A batch of random (input, target) windows; a pure function of (seed, step, micro), so a
    resumed run sees exactly the batches the uninterrupted run would have seen. Under torchrun,
    process `rank` gets its `batch_size` windows of the global batch of batch_size × world_size."""
    n = len(tokens)
    if n < seq_len + 1:
        raise ValueError(f"only {n} training tokens; need at least seq_len+1 = {seq_len + 1}")
    rng = np.random.default_rng([seed, step, micro])
    starts = rank_share(rng.integers(0, n - seq_len, size=batch_size * world_size), batch_size, rank)
    rows = np.stack([np.asarray(tokens[s : s + seq_len + 1], dtype=np.int64) for s in starts])
    rows_t = torch.from_numpy(rows)  # (B, T+1)
    return {"input_ids": rows_t[:, :-1], "targets": rows_t[:, 1:]}


def fixed_windows(tokens: np.ndarray, seq_len: int, n_windows: int) -> torch.Tensor:
    """Evenly spaced windows over the validation tokens: the same ones at every evaluation."""
    seq_len = min(seq_len, len(tokens) - 1)
    last_start = len(tokens) - seq_len - 1
    starts = np.linspace(0, last_start, num=n_windows).astype(np.int64)
    rows = np.stack([np.asarray(tokens[s : s + seq_len + 1], dtype=np.int64) for s in starts])
    return torch.from_numpy(rows)  # (N, T+1)


def bits_per_byte(loss_nats_per_token: float, n_tokens: int, n_bytes: int) -> float:
    """Tokenizer-independent loss: nats/token × tokens/byte ÷ ln 2."""
    return loss_nats_per_token * (n_tokens / max(1, n_bytes)) / math.log(2)


def make_evaluator(val: np.ndarray, meta: ShardMeta, seq_len: int, batch_size: int, n_batches: int,
                   rank: int = 0, world_size: int = 1):
    """Validation loss on n_batches × batch_size fixed windows per process: under torchrun each
    process takes its share of n_batches × batch_size × world_size windows and the sums are
    all-reduced, so N processes with batch b evaluate what one process with batch N·b does."""
    windows = rank_share(fixed_windows(val, seq_len, n_batches * batch_size * world_size), n_batches * batch_size, rank)

    def evaluate(model: torch.nn.Module) -> dict:
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for chunk in windows.split(batch_size):
            chunk = chunk.to(device)
            logits = model(chunk[:, :-1])
            total += lm_loss(logits, chunk[:, 1:]).item() * chunk[:, 1:].numel()
            count += chunk[:, 1:].numel()
        if world_size > 1:
            total, count = distributed.sum_over_ranks([total, count])
        loss = total / count
        return {
            "val_loss": loss,
            "val_ppl": math.exp(min(loss, 50.0)),
            "val_bpb": bits_per_byte(loss, meta.n_val_tokens, meta.n_val_bytes),
        }

    return evaluate


def sample_texts(model: GPT, tokenizer: Tokenizer, prompts: list[str], scfg: SampleConfig, precision: str) -> list[str]:
    """Continue each prompt; documents start after <|endoftext|> in the shards, so prompts do too."""
    device = next(model.parameters()).device
    ids = [[tokenizer.eot_id] + tokenizer.encode(p) for p in prompts]
    sampling = scfg.sampling(stop_ids=(tokenizer.eot_id,))
    model.eval()
    with autocast(precision, device):
        results = generate(model, ids, sampling, pad_id=tokenizer.pad_id)
    return [p + tokenizer.decode(r.tokens) for p, r in zip(prompts, results)]


