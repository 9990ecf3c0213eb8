"""Running stages in order: checks before anything starts, one stage at a time (reused, resumed or
redone, see `picochat.run.registry`), the plan with its time estimate, then the report.

A stage that was killed resumes from its last checkpoint when its fingerprint is unchanged; a
stage that is redone is set aside until its replacement completes (`picochat.run.backup`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from picochat.config import RunConfig, save_config
from picochat.core import distributed
from picochat.core.checkpoint import CHECKPOINT_DIR
from picochat.core.child_process import log_file
from picochat.core.io import MetricsLog, atomic_write_json, remove_orphan_temp_dirs
from picochat.core.memory import peak_rss_mb, reset_peak_rss
from picochat.core.threads import torch_threads
from picochat.data.sources import resolve_source
from picochat.hf import HF_PREFIX
from picochat.report import write_report
from picochat.report.ahead import can_work_ahead
from picochat.report.summary_lines import summary_line
from picochat.run.backup import StageBackup
from picochat.run.estimate import fmt_seconds
from picochat.run.plan import QUICK_STAGES, REPORT, print_plan
from picochat.run.registry import STAGES, run_stages, stage_fingerprint, stage_status, upstream_of
from picochat.run.side_by_side import finish_stage_process, stage_beside, stage_process
from picochat.stages.tokenizer import tokenizer_corpus


def _check_local_sources(cfg: RunConfig, stages: list[str]) -> None:
    """A missing local data file stops the run before the first stage, not hours later when the
    stage that reads it starts (Hugging Face names are downloaded by their stage)."""
    specs, _, tokenizer_key = tokenizer_corpus(cfg)
    reads = {"tokenizer": (tokenizer_key, specs), "pretrain": ("pretrain.sources", cfg.pretrain.sources),
             "sft": ("sft.sources", cfg.sft.sources), "rm": ("rm.sources", cfg.rm.sources),
             "ppo": ("ppo.prompts", cfg.ppo.prompts), "dpo": ("dpo.sources", cfg.dpo.sources)}
    for name in stages:
        key, sources = reads.get(name, ("", []))
        for spec in sources:
            if not spec.startswith(HF_PREFIX):
                resolve_source(spec, key)  # raises, naming the setting and how to get the data


def check_run(cfg: RunConfig, running: list[str] | None = None) -> None:
    """Every stage of the run finds what it reads within the run (a model setting can point at a
    directory instead), every model fits the sequence lengths it is given, and the local data
    files of the stages about to run (`running`, default all) exist."""
    stages = run_stages(cfg)
    for name in stages:
        missing = [u for u in upstream_of(name, cfg) if u not in stages]
        if missing:
            raise ValueError(f"stage {name!r} reads stage {missing[0]!r}, which this run does not have "
                             f"(stages: {', '.join(stages)}); add it to stages, or point the setting that names it "
                             f"(e.g. {name}.init) at a model directory")
    _check_local_sources(cfg, [n for n in (running or stages) if n in STAGES])
    for name in stages:
        check_stage_lengths(name, cfg)


def check_stage_lengths(name: str, cfg: RunConfig) -> None:
    """The sequence lengths stage `name` is given fit the model it trains."""
    max_len = cfg.model.max_seq_len
    if name == "pretrain" and cfg.pretrain.seq_len > max_len:
        raise ValueError(f"pretrain.seq_len={cfg.pretrain.seq_len} exceeds model.max_seq_len={max_len}")
    if name == "ppo" and cfg.ppo.format == "text" and cfg.ppo.prompt_tokens + 1 + cfg.ppo.max_new_tokens > max_len:
        raise ValueError(f"ppo.prompt_tokens + 1 + ppo.max_new_tokens exceeds model.max_seq_len={max_len}")


def run_stage(name: str, cfg: RunConfig, out: Path, show_progress: bool = True, force: bool = False) -> dict:
    """Run one stage (reusing it when complete and unchanged) and return its summary.

    Under torchrun every process calls this. Training stages run in all of them; the others
    (world, tokenizer, label) run in rank 0 while the rest wait. Only rank 0 changes files here;
    the other processes then read the summary it wrote.
    """
    out = Path(out)
    stage = STAGES[name]
    stage_dir = out / name
    status = "stale" if force and (stage_dir).exists() else stage_status(name, cfg, out)
    if status == "done":
        summary = json.loads((stage_dir / "summary.json").read_text())
        print(f"[{name}] up to date, reusing {stage_dir} ({summary_line(name, summary)})")
        return summary
    for up in upstream_of(name, cfg):
        if stage_status(up, cfg, out) != "done":
            raise RuntimeError(
                f"stage {name!r} needs stage {up!r} first: run `picochat {up} --out {out}` "
                f"(or `picochat run --out {out}`)"
            )
    # Everything that can be checked without running the stage is checked before anything on disk
    # changes: a mistyped file name must not cost the finished stage it would replace.
    _check_local_sources(cfg, [name])
    check_stage_lengths(name, cfg)
    distributed.barrier()  # every process has read the stage's state before rank 0 changes it
    backup = StageBackup(stage_dir, out / "config.yaml")
    if distributed.is_main():
        where = backup.set_aside() if status == "stale" else backup.remember_config()
        if status == "stale":
            print(f"[{name}] config or inputs changed since {stage_dir} was written: "
                  f"starting this stage over ({where})")
        remove_orphan_temp_dirs(stage_dir, CHECKPOINT_DIR)  # left by a kill during a checkpoint write
        stage_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(stage_dir / "stage.json", {"stage": name, "fingerprint": stage_fingerprint(name, cfg)})
        save_config(cfg, out / "config.yaml")
    distributed.barrier()
    summary: dict = {}
    try:
        if stage.distributed or distributed.is_main():
            reset_peak_rss()  # this stage's peak, not the peak of the stages before it in this process
            summary = stage.run(cfg, out, show_progress)
    except BaseException:
        if distributed.is_main():
            print(f"[{name}] stopped: {backup.rollback()}", file=sys.stderr)
        raise
    if distributed.is_main():
        summary["fingerprint"] = stage_fingerprint(name, cfg)
        summary["peak_rss_mb"] = peak_rss_mb()
        metrics = MetricsLog(stage_dir / "metrics.jsonl")
        if not metrics.path.exists():  # stages without a training loop log their one result
            metrics.write({"step": 0, **{k: v for k, v in summary.items() if isinstance(v, (int, float))}})
        atomic_write_json(stage_dir / "summary.json", summary)
        backup.commit()
        print(f"[{name}] done: {summary_line(name, summary)} -> {stage_dir}")
    distributed.barrier()  # the others read what rank 0 wrote
    if not distributed.is_main():
        summary = json.loads((stage_dir / "summary.json").read_text())
    return summary


def _run_side_by_side(name: str, other: str, cfg: RunConfig, out: Path, show_progress: bool,
                      report_next: bool) -> dict:
    """Stage `name` here and stage `other` in a child process, one thread each (`cfg.side_by_side`);
    with `report_next`, the child then does the report's work ahead until `name` is done. Returns
    both summaries."""
    report_ahead = report_next and can_work_ahead(cfg)
    print(f"[run] {other} trains beside {name}, one thread each, its output in {log_file(out, other)} "
          f"(side_by_side=false runs one after the other)"
          + (f"; then, until {name} is done, the report's work that needs no {name} model" if report_ahead else ""))
    child, ahead_started = stage_process(run_stage, other, cfg, out, report_ahead)
    child.start()
    try:
        with torch_threads(1):
            summary = run_stage(name, cfg, out, show_progress)
    except KeyboardInterrupt:
        print(f"[run] waiting for {other} to save its checkpoint", file=sys.stderr)
        child.stop(grace_s=60)
        raise
    except BaseException:
        child.stop()
        raise
    if child.process.is_alive() and not ahead_started.is_set():
        print(f"[run] {name} is done; waiting for {other} (its log: {log_file(out, other)})")
    finish_stage_process(child, ahead_started)
    other_summary = json.loads((out / other / "summary.json").read_text(encoding="utf-8"))
    print(f"[{other}] done: {summary_line(other, other_summary)} -> {out / other}")
    return {name: summary, other: other_summary}


def run_pipeline(cfg: RunConfig, out: Path, stages: list[str] | None = None, show_progress: bool = True) -> dict:
    """Run `stages` (default: the run's own, `cfg.stages`, then the report), reusing the complete ones."""
    check_run(cfg, stages)
    out = Path(out)
    names = stages or [*run_stages(cfg), REPORT]
    unknown = [n for n in names if n not in STAGES and n != REPORT]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; stages are: {', '.join([*STAGES, REPORT])}")
    ordered = [n for n in STAGES if n in names] + ([REPORT] if REPORT in names else [])
    if distributed.is_main():  # the resolved config of the whole run, also when every stage is reused
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    t0 = time.perf_counter()
    estimate: dict[str, float | None] | None = None
    summaries = {}
    for name in ordered:
        if estimate is None and name not in QUICK_STAGES and distributed.is_main():
            estimate = print_plan(cfg, out, ordered[ordered.index(name):])
        if name == REPORT:
            if distributed.is_main():
                summaries[name] = write_report(cfg, out, show_progress)
            continue
        if name in summaries:  # ran beside an earlier stage
            continue
        other = stage_beside(cfg, name, ordered, lambda n: stage_status(n, cfg, out) != "done")
        if other is None:
            summaries[name] = run_stage(name, cfg, out, show_progress)
        else:
            summaries |= _run_side_by_side(name, other, cfg, out, show_progress, REPORT in ordered)
    if distributed.is_main():
        planned = sum(v for v in (estimate or {}).values() if v is not None)
        print(f"[run] finished in {fmt_seconds(time.perf_counter() - t0)}"
              + (f" (estimated {fmt_seconds(planned)})" if planned else ""))
    return summaries
