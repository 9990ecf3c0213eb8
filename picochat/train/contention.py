"""Pick the faster CPU thread count while training, because another process may compete for the cores.

Measured on a 2-core laptop: when another process takes one core, 2-thread PyTorch steps slowed
about 20x (OpenMP threads spin at barriers waiting for the busy core), while 1 thread ran at about
half speed. Watching for a jump in step time alone misses a machine that is already busy when the
run starts (every step is slow, so none stands out), so the watch also *measures*: after a few
warm-up steps it runs a handful of steps on one thread, keeps whichever setting stepped faster, and
compares again every `recheck_every` steps, or at once when step times jump. The scheduled checks
fall on fixed global steps (10, 210, 410, ...), so a resumed run changes threads at the same steps
as the uninterrupted one: the thread count changes float rounding, and exact resume needs both
runs to compute each step with the same count.

On a quiet 2-core machine a check costs `probe_steps` steps at about half speed: 5 steps in 200,
about 1% of the run.
"""

from __future__ import annotations

import statistics
from collections import deque

import torch


class StepTimeWatch:
    def __init__(self, device: torch.device, *, warmup_steps: int = 10, probe_steps: int = 5,
                 recheck_every: int = 200, window: int = 20, slowdown: float = 4.0, patience: int = 3):
        self.full_threads = torch.get_num_threads()
        self.enabled = device.type == "cpu" and self.full_threads > 1
        self.probe_steps = probe_steps
        self.recheck_every = recheck_every
        self.slowdown = slowdown
        self.patience = patience
        self.threads = self.full_threads  # the setting in use outside a probe
        self.times: deque[float] = deque(maxlen=window)  # recent step times at self.threads
        self.probe_times: list[float] = []
        self.probing = False
        self.warmup_steps = warmup_steps
        self.slow_steps: list[float] = []  # the current streak of jumped step times

    @property
    def other_threads(self) -> int:
        return 1 if self.threads == self.full_threads else self.full_threads

    def observe(self, step_s: float, step: int, bar=None) -> None:
        """Record the wall time of training step `step` (global, counted from 1); may change torch's
        thread count for the next steps."""
        if not self.enabled:
            return
        if self.probing:
            self.probe_times.append(step_s)
            if len(self.probe_times) >= self.probe_steps:
                self._decide(bar)
            return
        jumped = (len(self.times) == self.times.maxlen
                  and step_s > self.slowdown * statistics.median(self.times))
        if jumped:
            self.slow_steps.append(step_s)
        else:
            self.slow_steps = []
            self.times.append(step_s)
        scheduled = step >= self.warmup_steps and (step - self.warmup_steps) % self.recheck_every == 0
        if (scheduled and self.times) or len(self.slow_steps) >= self.patience:
            self._start_probe()

    def _start_probe(self) -> None:
        if len(self.slow_steps) >= self.patience:  # the jumped steps, not the quiet past, describe the setting now
            self.times.clear()
            self.times.extend(self.slow_steps)
        self.slow_steps = []
        self.probing, self.probe_times = True, []
        torch.set_num_threads(self.other_threads)

    def _decide(self, bar) -> None:
        current = statistics.median(self.times) if self.times else float("inf")
        other = statistics.median(self.probe_times)
        self.probing = False
        if other < 0.9 * current:  # a clear win only: the two settings are timed on different steps
            old, self.threads = self.threads, self.other_threads
            self.times.clear()
            self.times.extend(self.probe_times)
            reason = ("another process is probably using the CPU" if self.threads < self.full_threads
                      else "the CPU is free again")
            msg = (f"{self.threads} thread(s) ran steps in {other:.2f}s against {current:.2f}s on {old}: "
                   f"{reason}; training on {self.threads} thread(s), checking again in {self.recheck_every} steps")
            (bar.write if bar is not None else print)(msg)
        torch.set_num_threads(self.threads)

    def restore(self) -> None:
        """Give the process back the thread count it started with (later stages of a run share it)."""
        if self.enabled:
            torch.set_num_threads(self.full_threads)
