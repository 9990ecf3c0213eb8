"""`torch_threads(n)`: a block of work on n torch CPU threads, the process's setting restored after.

Stages and report steps pick their own thread count (sampling small batches gains little from a
second thread; a stage beside another in a child process gets one), while the process goes on
with its own setting afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """n torch threads inside the block (n <= 0: leave the setting as it is), restored after."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
