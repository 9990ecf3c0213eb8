"""Notice when CPU training collapses because another process competes for the cores.

Measured on a 2-core laptop: when another process takes one core, 2-thread PyTorch steps slowed
about 20x (OpenMP threads spin at barriers waiting for the busy core), while 1 thread ran at
about half speed. So when step times jump far above their recent median, drop to one thread,
and try the original thread count again later.
"""

from __future__ import annotations

import statistics
from collections import deque

import torch


class StepTimeWatch:
    def __init__(self, device: torch.device, window: int = 20, slowdown: float = 4.0, patience: int = 3,
                 retry_after_steps: int = 200):
        self.enabled = device.type == "cpu" and torch.get_num_threads() > 1
        self.threads = torch.get_num_threads()
        self.times: deque[float] = deque(maxlen=window)
        self.slowdown = slowdown
        self.patience = patience
        self.retry_after_steps = retry_after_steps
        self.slow_streak = 0
        self.steps_reduced = -1  # -1: running at full thread count

    def observe(self, step_s: float, bar=None) -> None:
        if not self.enabled:
            return
        if self.steps_reduced >= 0:
            self.steps_reduced += 1
            if self.steps_reduced >= self.retry_after_steps:
                torch.set_num_threads(self.threads)
                self.steps_reduced = -1
                self.times.clear()
            return
        if len(self.times) == self.times.maxlen and step_s > self.slowdown * statistics.median(self.times):
            self.slow_streak += 1
            if self.slow_streak >= self.patience:
                torch.set_num_threads(1)
                self.steps_reduced = 0
                self.slow_streak = 0
                msg = (f"step time jumped to {step_s:.2f}s (>{self.slowdown:.0f}x the recent median): "
                       f"another process is probably using the CPU; running on 1 thread for "
                       f"{self.retry_after_steps} steps")
                (bar.write if bar is not None else print)(msg)
            return
        self.slow_streak = 0
        self.times.append(step_s)
