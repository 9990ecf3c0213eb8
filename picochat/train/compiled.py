"""`train.compile=true`: the training forward through `torch.compile`, with a way back to eager.

On the tiny preset's pretraining step (bf16, 16 x 256 tokens) inductor fuses the elementwise work
that dominates a model this small (RoPE, SwiGLU, norms, residuals, casts) and the step runs 1.36x
faster on this project's 2-core CPU after 17-33 s of compiling (bench/README.md). Compiling needs a
C++ compiler on CPU (or Triton on GPU); a machine without one must still train, so a failure of the
first compiled call is reported once and the run goes on uncompiled. Later failures are real
errors and are raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm


class CompiledForward:
    """Calls `torch.compile(module)`; if the first call fails, says why and calls `module` from then on."""

    def __init__(self, module: torch.nn.Module, log: Callable[[str], None] = tqdm.write, label: str = "train"):
        self.module = module
        self.compiled = torch.compile(module)
        self.log = log
        self.label = label
        self.first_call_done = False
        self.failed = False

    def __call__(self, *args, **kwargs):
        if self.failed:
            return self.module(*args, **kwargs)
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
            return self.module(*args, **kwargs)
        self.first_call_done = True
        self.log(f"[{self.label}] torch.compile: the first forward compiled in {time.perf_counter() - start:.0f} s")
        return out
