"""`train.compile=true`: the training loss through `torch.compile`, with a way back to eager.

In one process the whole loss is compiled (the model's forward, the LM head and the cross
entropy), so inductor fuses the elementwise work that dominates a model this small (RoPE, SwiGLU,
norms, residuals, dtype casts, log-softmax): compiling the loss rather than the model alone is
worth 1.2x more on the tiny preset's pretraining step (bench/README.md). Under torchrun only the
DDP/FSDP-wrapped model is compiled, the way PyTorch documents for DDP.

Compiling needs a C++ compiler on CPU (Triton on GPU); a machine without one must still train,
so when the first compiled call fails and the same call uncompiled does not, the failure is
reported once and the run goes on uncompiled (a missing compiler fails there, in the forward's
compile; the backward compiles at the first backward). Later failures are raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm


class DeterministicKernels:
    """Compiled CPU training that computes the same numbers every run, from creation to `restore()`.

    Inductor's C++ kernels accumulate scatters (the embedding's backward) with atomic adds across
    OpenMP threads, so with 2 threads two identical runs parted ways: 60 steps of the tiny
    preset's pretraining gave step-60 losses 2.638 and 2.608, and fresh `make demo` runs ended
    pretraining at val loss 0.689 to 0.730 (SFT greedy gold 0.52 to 0.64). With PyTorch's
    deterministic algorithms on while it compiles and runs, inductor uses its ordered kernel: two
    runs bit for bit equal, at the same speed (15.4k against 14.4-15.2k tokens/s). Eager CPU ops
    are deterministic already. Uninitialised memory is left unfilled, as it is outside.
    On GPU nothing changes: its deterministic mode slows kernels and needs cuBLAS settings.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        if enabled:
            self.before = (torch.are_deterministic_algorithms_enabled(),
                           torch.is_deterministic_algorithms_warn_only_enabled(),
                           torch.utils.deterministic.fill_uninitialized_memory)
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.utils.deterministic.fill_uninitialized_memory = False

    def restore(self) -> None:
        if self.enabled:
            torch.use_deterministic_algorithms(self.before[0], warn_only=self.before[1])
            torch.utils.deterministic.fill_uninitialized_memory = self.before[2]


class CompiledCall:
    """Calls `compile(fn)`'s result; if its first call fails, says why and calls `fn` from then on."""

    def __init__(self, fn: Callable, compiled: Callable, log: Callable[[str], None] = tqdm.write,
                 label: str = "train"):
        self.fn = fn
        self.compiled = compiled
        self.log = log
        self.label = label
        self.first_call_done = False
        self.failed = False

    def __call__(self, *args, **kwargs):
        if self.failed:
            return self.fn(*args, **kwargs)
        if self.first_call_done:
            return self.compiled(*args, **kwargs)
        start = time.perf_counter()
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - told apart below: the compiler's failure, or the batch's
            failure = e
        else:
            self.first_call_done = True
            self.log(f"[{self.label}] torch.compile: the first step's forward compiled in "
                     f"{time.perf_counter() - start:.0f} s")
            return out
        # Uncompiled, outside the except block: an error here is the step's own (a bad batch, out of
        # memory), raised as it is, not blamed on the compiler.
        out = self.fn(*args, **kwargs)
        self.failed = True
        reason = str(failure).strip().splitlines()[0][:300] if str(failure).strip() else type(failure).__name__
        self.log(f"[{self.label}] torch.compile failed ({type(failure).__name__}: {reason}); "
                 f"training uncompiled (set train.compile=false to skip the attempt)")
        return out
