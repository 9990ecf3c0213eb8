"""DPO beside PPO: two stages at once, one thread each, on a CPU with two cores or more.

PPO and DPO both start from the SFT model and neither reads the other, so `picochat run` can
train them at the same time. On a small model neither keeps two threads busy (sampling small
batches and training 3.7M parameters are dominated by per-op overhead), so one thread each in
two processes does more work per second than two threads taking turns: on the 2-core machine of
bench/README.md, PPO alone on 2 threads took 211 s and DPO 175 s (386 s in a row), side by side
on one thread each 295 s and 220 s, so the pair was done in 295 s.

DPO runs in a child process (`picochat.core.child_process`) that calls the same `run_stage` as the
pipeline, so it checkpoints, resumes and writes its summary as always; its output goes to
`<out>/logs/dpo.log`. The parent trains PPO on one thread meanwhile. When the run's report comes
next, the child goes on, once DPO is done, with the report's work that needs no PPO model
(`picochat.report.ahead`), until the parent, done with PPO, stops it. The
results are those of one-thread runs, the same every time; a run that pins threads itself
(`ppo.train.threads` or `dpo.train.threads`), or a machine with less than
`picochat.core.child_process.MIN_FREE_GB` of memory free, runs the stages one after the other instead.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable
from multiprocessing.synchronize import Event
from pathlib import Path

from picochat.config import RunConfig
from picochat.core.child_process import ChildProcess, log_file, room_for_a_child
from picochat.report.ahead import report_work_ahead

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


def stage_process(run_stage: Callable[..., dict], name: str, cfg: RunConfig, out: Path,
                  report_ahead: bool = False) -> tuple[ChildProcess, Event]:
    """Stage `name` of the run, by the pipeline's `run_stage`, in a child process; with
    `report_ahead`, the report's work ahead after it. Returns the child and the event it sets when
    its stage is done and the work ahead begins (`finish_stage_process` reads it)."""
    ahead_started = multiprocessing.get_context("spawn").Event()
    child = ChildProcess(name, log_file(out, name), _stage_then_report_ahead, run_stage, name, cfg, Path(out),
                         ahead_started if report_ahead else None)
    return child, ahead_started


def finish_stage_process(child: ChildProcess, ahead_started: Event) -> None:
    """Wait for the child's stage; then stop the report's work ahead if it is still at it (the
    report computes what it did not finish). Raises as `ChildProcess.finish` when the stage failed."""
    while child.process.is_alive() and not ahead_started.is_set():
        child.process.join(timeout=0.2)
    if child.process.is_alive():  # its stage is done: stop the work ahead as Ctrl-C does
        child.stop()
    else:
        child.finish()


def _stage_then_report_ahead(run_stage: Callable[..., dict], name: str, cfg: RunConfig, out: Path,
                             ahead_started: Event | None) -> None:
    """The child's body: the stage, then (when `ahead_started` is given) the report's work ahead
    until the parent stops it. The work ahead only saves the report time: when it fails, the
    report computes the same pieces and says what is wrong, so the stage's process still succeeds."""
    run_stage(name, cfg, out, False)
    if ahead_started is None:
        return
    try:
        # inside the try: the parent may stop the work ahead (`ChildProcess.stop`, a SIGINT) as soon
        # as it sees the event, while set() is still returning
        ahead_started.set()
        report_work_ahead(cfg, out)
    except KeyboardInterrupt:
        print("[report] ahead: stopped, the report computes the rest", flush=True)
    except Exception:
        traceback.print_exc()
        print("[report] ahead: failed (above); the report computes these pieces itself", flush=True)
