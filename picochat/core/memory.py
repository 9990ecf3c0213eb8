"""Peak memory of one stage, when several stages share a process (`picochat run`).

The process's peak resident set size (getrusage's ru_maxrss, /proc's VmHWM) only ever grows, so
the second stage of a run would report the first one's peak. Linux lets a process reset that
high-water mark by writing 5 to /proc/self/clear_refs, and the pipeline does so before each
stage; where that is not possible the figure stays the peak of the process so far (an upper bound).
"""

from __future__ import annotations

import resource
import sys


def reset_peak_rss() -> bool:
    """Restart the peak-RSS count from the current RSS; False where the OS does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """The process's peak resident memory (since the last reset) in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # macOS reports bytes, Linux KiB


def available_memory_gb() -> float | None:
    """Memory the system can give new work now (Linux's MemAvailable), in GiB; None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None
