"""Answers a model already gave, kept on disk so that the same question is not sampled twice.

The SFT, PPO and DPO stages each evaluate the SFT model on the same held-out prompts with the same
seed and settings (PPO and DPO compare their policy against it), and each used to sample it again:
identical answers, three times. An entry is keyed by everything the answers depend on: the
model's weights and config, the prompts' tokens, the sampling settings, the batch size (it fixes
the batches and their random streams), the precision and device, and the code's version. So a
changed model, prompt or setting misses the cache instead of reading answers it did not give.

The gold scores are not cached: scoring is cheap, and a changed scorer must not read old scores.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

import picochat
from picochat.core.generate import SamplingConfig
from picochat.core.io import atomic_write_json
from picochat.core.model import GPT

# Raise when the answers the same inputs give change (generation, sampling or prompt rendering):
# entries written by older code are then no longer read. 2: a prompt repeated in one batch is
# prefilled once (`generate`); in bf16 a batch of few distinct prompts rounds differently. 3: a
# single prompt is decoded in fp32 on a CPU under bf16 autocast too.
CACHE_VERSION = 3


def weights_digest(model: GPT) -> str:
    """A hash of the model's config and of every parameter and buffer it saves, bit for bit."""
    h = hashlib.sha256(json.dumps(model.cfg.to_dict(), sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class AnswerCache:
    """A directory of `<key>.json` files, each the (text, finished) answers of one call."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    @staticmethod
    def key(model: GPT, digest: str, prompt_ids: list[list[int]], sampling: SamplingConfig, precision: str,
            batch_size: int) -> str:
        """The entry of `model` (whose `weights_digest` is `digest`) answering these prompts so."""
        device = next(model.parameters()).device.type
        blob = json.dumps({"version": [CACHE_VERSION, picochat.__version__, torch.__version__], "model": digest,
                           "prompts": prompt_ids, "sampling": sampling.__dict__, "precision": precision,
                           "batch_size": batch_size, "device": device}, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def get(self, key: str, n: int) -> list[tuple[str, bool]] | None:
        """The answers stored under `key`, or None (absent, unreadable, or not `n` of them)."""
        path = self.directory / f"{key}.json"
        try:
            answers = json.loads(path.read_text(encoding="utf-8"))["answers"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(answers, list) or len(answers) != n:
            return None
        return [(str(text), bool(finished)) for text, finished in answers]

    def put(self, key: str, answers: list[tuple[str, bool]]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.directory / f"{key}.json", {"answers": [list(a) for a in answers]})
