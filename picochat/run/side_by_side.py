"""DPO beside PPO: two stages at once, one thread each, on a CPU with two cores or more.

PPO and DPO both start from the SFT model and neither reads the other, so `picochat run` can
train them at the same time. On a small model neither keeps two threads busy (sampling small
batches and training 3.7M parameters are dominated by per-op overhead), so one thread each in
two processes does more work per second than two threads taking turns: on the 2-core machine of
bench/README.md, PPO alone on 2 threads took 211 s and DPO 175 s (386 s in a row), side by side
on one thread each 295 s and 220 s, so the pair was done in 295 s.

DPO runs in a child process (`picochat.core.child_process`) that calls the same `run_stage` as the
pipeline, so it checkpoints, resumes and writes its summary as always; its output goes to
`<out>/logs/dpo.log`. The parent trains PPO on one thread meanwhile. The
results are those of one-thread runs, the same every time; a run that pins threads itself
(`ppo.train.threads` or `dpo.train.threads`), or a machine with less than
`picochat.core.child_process.MIN_FREE_GB` of memory free, runs the stages one after the other instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from picochat.config import RunConfig
from picochat.core.child_process import ChildProcess, log_file, room_for_a_child

BESIDE = {"ppo": "dpo"}  # stage run in the parent -> the stage run beside it in a child process
# Measured on the 2-core machine (module docstring): one thread each, the pair takes this many
# times the longer stage's time alone on every core.
SIDE_BY_SIDE_SLOWDOWN = 1.4


def stage_beside(cfg: RunConfig, name: str, names: list[str], pending: Callable[[str], bool]) -> str | None:
    """The stage to run beside stage `name` (in the parent), or None: both are in this run and
    still to do, side by side is on (`cfg.side_by_side`), neither stage pins its own thread count,
    and `room_for_a_child()` (two threads to split, MIN_FREE_GB of memory free)."""
    other = BESIDE.get(name)
    if other is None or other not in names or not cfg.side_by_side:
        return None
    if getattr(cfg, name).train.threads or getattr(cfg, other).train.threads:
        return None
    return other if pending(name) and pending(other) and room_for_a_child() else None


def stage_process(run_stage: Callable[..., dict], name: str, cfg: RunConfig, out: Path) -> ChildProcess:
    """Stage `name` of the run, by the pipeline's `run_stage`, in a child process."""
    return ChildProcess(name, log_file(out, name), run_stage, name, cfg, Path(out), False)
