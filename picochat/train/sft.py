"""Supervised fine-tuning: teach the pretrained GPT to answer in the chat format.

Loss is next-token cross entropy on assistant tokens only (their content and <|im_end|>); the
system and user turns are context. Examples are padded, not packed: chat examples here are short
(tens of tokens), so padding to the longest example of a batch wastes little, while packing would
need a block-diagonal attention mask to keep examples from attending to each other, which costs
SDPA its fast causal path on CPU. Pads sit on the right, where causal attention never lets a real
token see them, and their targets are ignored.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from picochat.core import distributed
from picochat.core.batching import right_pad
from picochat.core.chat import render_chat
from picochat.core.distributed import rank_share
from picochat.core.model import lm_loss
from picochat.core.tokenizer import Tokenizer
from picochat.eval.gold_eval import held_out_subset  # noqa: F401  (moved there; picochat.report imports it from here)

IGNORE = -100


def tokenize_conversations(tokenizer: Tokenizer, conversations,
                           seq_len: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """[(ids, loss_mask)] for each conversation, cut to seq_len + 1 tokens; also the number cut.

    A conversation whose assistant tokens all fall past the cut is dropped (it would teach nothing).
    """
    out, n_cut = [], 0
    for messages in conversations:
        ids, mask = render_chat(tokenizer, messages)
        if len(ids) > seq_len + 1:
            n_cut += 1
            ids, mask = ids[: seq_len + 1], mask[: seq_len + 1]
        if sum(mask[1:]) == 0:
            continue
        out.append((np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=np.bool_)))
    return out, n_cut


def pad_batch(examples: list[tuple[np.ndarray, np.ndarray]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids (B, T) and targets (B, T) with IGNORE where the
    next token is not an assistant token (or is padding)."""
    return {"input_ids": right_pad([ids[:-1] for ids, _ in examples], pad_id),  # (B, T)
            "targets": right_pad([np.where(mask[1:], ids[1:], IGNORE) for ids, mask in examples], IGNORE)}


def sft_batch(examples, batch_size: int, pad_id: int, seed: int, step: int, micro: int,
              rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
    """A random batch, a pure function of (seed, step, micro) for exact resume; under torchrun,
    process `rank`'s share of the global batch of batch_size × world_size."""
    rng = np.random.default_rng([seed, step, micro])
    idx = rank_share(rng.integers(0, len(examples), size=batch_size * world_size), batch_size, rank)
    return pad_batch([examples[i] for i in idx], pad_id)


def make_val_loss(val_examples, batch_size: int, pad_id: int, max_examples: int, rank: int = 0, world_size: int = 1):
    """Validation loss over the assistant tokens of the first max_examples held-out conversations
    (max_examples × world_size under torchrun, every world_size-th one per process, the token
    sums all-reduced)."""
    examples = val_examples[: max_examples * world_size]
    share = examples[rank::world_size]
    # Every process runs as many forwards (FSDP needs each process in each): a shorter share is
    # topped up with a conversation whose tokens do not count.
    per_process = -(-len(examples) // world_size)
    share += [(ids, np.zeros_like(mask)) for ids, mask in examples[: per_process - len(share)]]
    batches = [pad_batch(share[i : i + batch_size], pad_id) for i in range(0, len(share), batch_size)]

    def evaluate(model: torch.nn.Module) -> dict:
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for b in batches:
            logits = model(b["input_ids"].to(device))
            n = int((b["targets"] != IGNORE).sum())
            if n:
                total += lm_loss(logits, b["targets"].to(device)).item() * n
                count += n
        if world_size > 1:
            total, count = distributed.sum_over_ranks([total, count])
        return {"val_loss": total / max(1, count), "val_ppl": math.exp(min(50.0, total / max(1, count)))}

    return evaluate


