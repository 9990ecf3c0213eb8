"""Time two (or more) contenders alternately in one process, so that load from other processes
on a shared machine falls on all of them alike.

Each timing window runs every contender for the same number of repetitions, in an order that
flips every window (A B, B A, A B, ...); per contender we keep the seconds per repetition of each
window. The ratio of two contenders is then taken window by window (the pair ran seconds apart)
and summarised by its median, which one disturbed window cannot move.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_times(contenders: dict[str, Callable[[], object]], *, warmup: int, windows: int,
                      reps_per_window: int) -> dict[str, list[float]]:
    """Seconds per call of each contender, one entry per window; `warmup` untimed calls first."""
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for w in range(windows):
        order = names if w % 2 == 0 else names[::-1]
        for name in order:
            t0 = time.perf_counter()
            for _ in range(reps_per_window):
                contenders[name]()
            times[name].append((time.perf_counter() - t0) / reps_per_window)
    return times


def paired_speedup(times_a: list[float], times_b: list[float]) -> float:
    """Median over windows of time_b / time_a: how many times faster A ran than B."""
    return statistics.median(b / a for a, b in zip(times_a, times_b))
