"""Work in a child process with one torch thread, beside the parent's own on the other thread.

A model this small keeps neither of two threads busy (per-op overhead dominates sampling small
batches and training 3.7M parameters), so two independent pieces of work on one thread each, in
two processes, get more done per second than both in turn on two threads (figures in
picochat/run/side_by_side.py). The child is spawned (a fresh interpreter, no forked torch
state); its output, C++ warnings included, goes to a log file, and a failure is raised in the
parent with the end of that log.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from picochat.core import distributed
from picochat.core.memory import available_memory_gb
from picochat.core.precision import default_device

# Both processes' peaks at once: on the demo PPO peaked at 2.7 GB and DPO at 3.2 GB alone. With
# less than this free (Linux's MemAvailable), one after the other rather than risk swapping.
MIN_FREE_GB = 8.0


def can_split_threads() -> bool:
    """Work can go to a child process: this run is one process on a CPU with at least two torch
    threads to split."""
    return not distributed.is_distributed() and default_device().type == "cpu" and torch.get_num_threads() >= 2


def room_for_a_child() -> bool:
    """`can_split_threads()`, and the machine has MIN_FREE_GB of memory free (or cannot say)."""
    if not can_split_threads():
        return False
    free = available_memory_gb()
    return free is None or free >= MIN_FREE_GB


def log_file(out: Path, name: str) -> Path:
    """Where a child process of run `out` doing `name` writes its output: <out>/logs/<name>.log."""
    return Path(out) / "logs" / f"{name}.log"


class ChildProcess:
    """`target(*args)` in a spawned child process with one torch thread and its output in `log`;
    `finish()` waits for it."""

    def __init__(self, name: str, log: Path, target: Callable, *args):
        self.name = name
        self.log = Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        context = multiprocessing.get_context("spawn")
        # set by the child once it listens to SIGINT: a SIGINT sent before (while its interpreter
        # starts, in a run that ignores SIGINT) would be lost, so `stop()` waits for it
        self.listening = context.Event()
        self.process = context.Process(target=_child, args=(self.log, self.listening, target, args),
                                       name=f"picochat-{name}")

    def start(self) -> ChildProcess:
        self.process.start()
        return self

    def finish(self) -> None:
        """Wait for the child; raise with the end of its log when it did not complete."""
        self.process.join()
        code = self.process.exitcode
        if code != 0:
            tail = "".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-15:]) \
                if self.log.exists() else ""
            how = "was interrupted" if "KeyboardInterrupt" in tail else f"stopped with exit code {code}"
            raise RuntimeError(f"[{self.name}] {how} in its own process; the end of its log ({self.log}):\n{tail}")

    def stop(self, grace_s: float = 0.0) -> None:
        """Ask the child to stop as Ctrl-C does (a training stage checkpoints), then wait for it.
        grace_s: first wait this long for it to stop by itself (a Ctrl-C at the terminal reaches
        every process of the group: a second one would abort its checkpoint)."""
        self.process.join(timeout=grace_s)
        while self.process.is_alive() and not self.listening.wait(timeout=0.1):
            pass  # its interpreter is still starting
        if self.process.is_alive():
            os.kill(self.process.pid, signal.SIGINT)
        self.process.join()


def _child(log: Path, listening, target: Callable, args: tuple) -> None:
    """The child's body: one thread, output to the log (C++ warnings too), then the work."""
    with open(log, "a", encoding="utf-8") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)
    # A run started in the background by a script (or with nohup) ignores SIGINT, and a spawned
    # child inherits that: `stop()` would then wait for the child's whole stage. The parent's
    # SIGINT is the child's only one there (a terminal's Ctrl-C does not reach a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    listening.set()
    torch.set_num_threads(1)
    target(*args)
