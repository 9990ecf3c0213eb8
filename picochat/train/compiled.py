"""`train.compile=true`: the training loss through `torch.compile`, with a way back to eager.

In one process the whole loss is compiled (the model's forward, the LM head and the cross
entropy), so inductor fuses the elementwise work that dominates a model this small (RoPE, SwiGLU,
norms, residuals, dtype casts, log-softmax): on the tiny preset's pretraining step (bf16, 16 x 256
tokens, 2 threads of this project's CPU) a step ran 1.36x faster with the model compiled and 1.58x
with the loss compiled around it, after ~20 s of compiling (bench/README.md). Under torchrun only
the DDP/FSDP-wrapped model is compiled, the way PyTorch documents for DDP.

Compiling needs a C++ compiler on CPU (Triton on GPU); a machine without one must still train,
so a failure of the first compiled call is reported once and the run goes on uncompiled. Later
failures are real errors and are raised.
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
        except Exception as e:  # noqa: BLE001 - any compiler failure: fall back, say why
            self.failed = True
            reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            self.log(f"[{self.label}] torch.compile failed ({type(e).__name__}: {reason}); "
                     f"training uncompiled (set train.compile=false to skip the attempt)")
            return self.fn(*args, **kwargs)
        self.first_call_done = True
        self.log(f"[{self.label}] torch.compile: the first step's forward compiled in "
                 f"{time.perf_counter() - start:.0f} s")
        return out
