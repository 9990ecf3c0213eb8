"""Device and numeric precision: which device, whether bf16 autocast pays off, the matmul peak.

bf16 autocast keeps fp32 master weights and runs matmuls in bf16. On CUDA with bf16 support and on
CPUs with AMX or AVX512-BF16 it is several times faster than fp32; elsewhere bf16 is emulated and
slower, so `auto` only picks it where the hardware has it.
"""

from __future__ import annotations

import contextlib
import functools
import time

import torch

from picochat.core.distributed import device


def default_device() -> torch.device:
    """cuda (cuda:LOCAL_RANK under torchrun) when there is a GPU, else cpu."""
    return device()


def cpu_has_fast_bf16() -> bool:
    """True when oneDNN reports native bf16 (AVX512-BF16 or AMX) on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """Map `auto|bf16|fp32` to what will actually run: `bf16` or `fp32`."""
    if requested == "fp32":
        return "fp32"
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        supported = cpu_has_fast_bf16()
    else:
        supported = False
    if requested == "bf16":
        if not supported:
            raise ValueError(
                f"train.precision=bf16 was requested but this {device.type} has no fast bf16; "
                "use train.precision=auto or fp32"
            )
        return "bf16"
    return "bf16" if supported else "fp32"


def autocast(precision: str, device: torch.device):
    """Context manager for the forward pass: bf16 autocast or nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@functools.cache
def measured_matmul_peak_flops(precision: str, device_type: str) -> float:
    """FLOP/s of a large square matmul on this machine, measured once per process (≈0.4 s on a laptop CPU).

    MFU is reported against this measured peak rather than a datasheet number: it tells how much
    of what this machine can actually do the training loop uses.
    """
    device = torch.device(device_type)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    reps = 20 if device.type == "cuda" else 3
    best = 0.0
    for _ in range(3):  # the best of 3 windows: other processes on the machine only ever slow one down
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: CUDA allocator peak, or the process's max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource  # here, not at the top: a Unix-only module, needed only for this CPU figure

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
