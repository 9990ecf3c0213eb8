"""What a benchmark result was measured on: CPU, cores, library versions, load, matmul peak."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time

import torch


def cpu_model_name() -> str:
    """`lscpu`'s "Model name" (falls back to /proc/cpuinfo, then platform)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (what `uptime` prints): other processes on the cores."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def library_versions(*names: str) -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in names:
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except ImportError:
            versions[name] = "not installed"
    return versions


def machine_info(*libraries: str) -> dict:
    return {
        "cpu": cpu_model_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1_5_15": load_average(),
        "versions": library_versions(*libraries),
    }


def matmul_peak_flops(dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048), windows: int = 3,
                      reps: int = 4) -> float:
    """Best FLOP/s of large square matmuls (n x n @ n x n) in `dtype` on the CPU.

    The best over sizes and timing windows: load from other processes only ever slows a window
    down, so the maximum is the closest estimate of what the hardware does when left alone.
    """
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        for _ in range(2):
            a @ b  # warm-up: oneDNN/MKL pick and cache their kernels
        for _ in range(windows):
            t0 = time.perf_counter()
            for _ in range(reps):
                a @ b
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")
