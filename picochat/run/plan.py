"""The plan `picochat run` prints before its long stages: what each stage will do (reuse, resume,
redo or run) and about how long it will take on this machine (`picochat.run.estimate`)."""

from __future__ import annotations

import json
from pathlib import Path

from picochat.config import RunConfig
from picochat.report.ahead import can_work_ahead
from picochat.run.backup import has_own_work
from picochat.run.estimate import estimate_seconds, fmt_seconds, measure_speeds
from picochat.run.registry import STAGES, stage_status
from picochat.run.side_by_side import SIDE_BY_SIDE_SLOWDOWN, stage_beside
from picochat.stages.label import LABEL_SPLIT_SPEEDUP, labels_side_by_side

# The last step of `picochat run`: report.md and plots/ from the stages' files. Not a stage with
# outputs to reuse: it is rewritten every time (in seconds, when its model comparison is reused).
REPORT = "report"
QUICK_STAGES = ("world", "tokenizer")  # seconds: the time estimate is said after them, with their data at hand
# The report's share that needs no PPO model (picochat.report.ahead), timed on the tiny demo's
# models on one thread: 77 of the comparison's 82 s and 68 of the benchmark cards' 93 s.
REPORT_AHEAD_SHARE = 0.8


def print_plan(cfg: RunConfig, out: Path, names: list[str]) -> dict[str, float | None]:
    """Say, before the long stages start, what each stage will do (reuse, resume or run) and about
    how long it will take on this machine; returns the estimates (None: seconds; 0: reused)."""
    status = {n: stage_status(n, cfg, out) for n in names if n in STAGES}
    if REPORT in names:  # its model comparison is redone when any model it compares is
        status[REPORT] = "todo" if any(s != "done" for s in status.values()) \
            or not (out / "report" / "compare.json").exists() else "done"
    todo = [n for n in names if status[n] != "done"]
    if not todo:
        return {}
    tokenizer = out / "tokenizer" / "summary.json"
    vocab = json.loads(tokenizer.read_text())["vocab_size"] if tokenizer.exists() else cfg.tokenizer.vocab_size
    speeds = measure_speeds(cfg, vocab)
    estimate = {n: 0.0 for n in names if n not in todo} | estimate_seconds(cfg, out, todo, speeds)
    beside = {}  # stage run beside another -> that one (picochat.run.side_by_side)
    for n in todo:
        other = stage_beside(cfg, n, names, lambda s: status.get(s) != "done")
        if other is not None and estimate[n] is not None and estimate[other] is not None:
            beside[other] = n
            idle = SIDE_BY_SIDE_SLOWDOWN * max(0.0, estimate[n] - estimate[other])  # the child's, once done
            if REPORT in todo and estimate[REPORT] and can_work_ahead(cfg):  # it works ahead for the report
                estimate[REPORT] -= min(idle, REPORT_AHEAD_SHARE * estimate[REPORT])
            estimate[n] = SIDE_BY_SIDE_SLOWDOWN * max(estimate[n], estimate[other])
            estimate[other] = 0.0
    if "label" in todo and estimate["label"] and labels_side_by_side(cfg):  # two processes label (stages/label.py)
        estimate["label"] /= LABEL_SPLIT_SPEEDUP
    print(f"[run] plan for {out} (this machine: {speeds.train_tokens_per_s:,.0f} training tokens/s, "
          f"{speeds.sample_step_s * 1000:.0f} ms per sampling step of 64 answers):")
    for n in names:
        if n not in todo:
            what, when = "reuse", "-"
        elif n in beside:
            what, when = "run", f"beside {beside[n]} (in its time)"
        else:
            resume = has_own_work(out / n) and status[n] == "todo"
            what = "resume" if resume else "redo" if status[n] == "stale" else "run"
            when = "seconds" if estimate[n] is None else ("at most " if resume else "~") + fmt_seconds(estimate[n])
        print(f"  {n:<10} {what:<7} {when}")
    total = sum(v for v in estimate.values() if v)
    print(f"  estimated total ~{fmt_seconds(total)} (another program using the CPU slows it down; "
          "progress bars show each stage's own ETA)")
    return estimate
