"""Learning-rate schedules: linear warmup, then cosine decay, WSD, or constant."""

from __future__ import annotations

import math

from picochat.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of `cfg.max_steps`."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    warmup = min(cfg.lr_warmup_steps, cfg.max_steps)
    if step < warmup:
        return peak * (step + 1) / warmup
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "cosine":
        span = max(1, cfg.max_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    # WSD (warmup-stable-decay): hold the peak, then decay linearly over the last fraction.
    decay_steps = max(1, int(cfg.max_steps * cfg.wsd_decay_fraction))
    decay_start = cfg.max_steps - decay_steps
    if step < decay_start:
        return peak
    progress = min(1.0, (step - decay_start + 1) / decay_steps)
    return peak + (floor - peak) * progress
