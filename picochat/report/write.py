"""The report stage: gather, compare, plot, write."""

from __future__ import annotations

import time
from pathlib import Path

from picochat.config import RunConfig
from picochat.core.child_process import ChildProcess, log_file, room_for_a_child
from picochat.core.io import atomic_write_json, atomic_write_text
from picochat.layout import MODEL_STAGES, STAGE_NAMES
from picochat.report.benchmark_card import benchmark_cards, cards_to_compute
from picochat.report.collect import read_run
from picochat.report.compare import compare_models, comparison_is_kept, score_stats
from picochat.report.markdown import render_report
from picochat.report.plots import PLOTS, matplotlib_available, write_plots

PLOT_FILES = [name for name, _, _ in PLOTS] + ["before_after.png", "best_of_n.png"]


def _cards_beside(cfg: RunConfig, out: Path) -> ChildProcess | None:
    """The benchmark cards computed in a child process while this one compares the models, one
    thread each (`cfg.side_by_side`; picochat.core.child_process says why): when cards are to be
    computed, the comparison too, and neither pins more threads (report.threads 1, eval.threads
    unset), and `room_for_a_child()`."""
    if not (cfg.side_by_side and cfg.report.threads == 1 and not cfg.eval.threads and room_for_a_child()):
        return None
    pending = cards_to_compute(cfg, out)
    if not pending or comparison_is_kept(cfg, out):  # nothing to do beside them: two threads here
        return None
    log = log_file(out, "benchmark_card")
    print(f"[report] the benchmark cards of {', '.join(pending)} are scored beside the comparison (one thread "
          f"each), their output in {log}")
    return ChildProcess("benchmark card", log, benchmark_cards, cfg, out, False).start()


def write_report(cfg: RunConfig, out: Path, show_progress: bool = True) -> dict:
    """Write <out>/report.md and <out>/plots/*.png; returns a summary (also <out>/report/summary.json)."""
    out = Path(out)
    t0 = time.perf_counter()
    run = read_run(out)
    cards_beside = _cards_beside(cfg, out)
    try:
        comparison = compare_models(cfg, out, show_progress)
    except BaseException:
        if cards_beside is not None:
            cards_beside.stop()
        raise
    if cards_beside is not None:
        cards_beside.finish()
    cards = benchmark_cards(cfg, out, show_progress)  # the child's cards are read, not computed again
    plots_dir = out / "plots"
    note = ""
    if matplotlib_available():
        plots = write_plots(run, comparison, plots_dir)
    else:
        plots, note = [], "n/a: plots need matplotlib (`pip install 'picochat[report]'`, then `picochat report`)."
    for name in PLOT_FILES:  # a plot the run no longer has data for must not linger from an older report
        if name not in {n for n, _ in plots}:
            (plots_dir / name).unlink(missing_ok=True)
    preset = cfg.preset if (out / "config.yaml").exists() else None
    # as run.registry.run_stages: every stage, the rounds stage only when there are later rounds
    planned = list(cfg.stages) or [s for s in STAGE_NAMES if s != "rounds" or cfg.rlhf.rounds > 1]
    text = render_report(run, comparison, plots, preset, cfg.report.n_examples, planned, note, cards)
    atomic_write_text(out / "report.md", text)
    summary = {
        "stage": "report",
        "report": str(out / "report.md"),
        "plots": [str(plots_dir / n) for n, _ in plots],
        "stages": list(run.summaries),
        "n_prompts": len(comparison["prompts"]),
        "models": {m: {d: score_stats(comparison, m, d) for d in comparison["models"][m]}
                   for m in MODEL_STAGES if m in comparison["models"]},
        "compare_wall_s": comparison.get("wall_s"),
        "benchmark_card": {stage: {"core": card["core"], "wall_s": card.get("wall_s")}
                           for stage, card in cards["cards"].items()} or cards["note"],
        "wall_s": time.perf_counter() - t0,
    }
    atomic_write_json(out / "report" / "summary.json", summary)
    print(f"[report] wrote {out / 'report.md'} and {len(plots)} plots in {plots_dir} ({summary['wall_s']:.1f} s)")
    return summary
