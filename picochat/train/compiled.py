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

from tqdm.auto import tqdm


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
