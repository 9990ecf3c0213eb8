"""What a run directory holds, read once for the report: each stage's summary.json and metrics.jsonl.

A stage that did not run (or a run without the built-in world) simply has no entry; the report
shows "n/a" for whatever it would have said.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from picochat.layout import STAGE_NAMES


@dataclass
class RunFiles:
    out: Path
    summaries: dict[str, dict] = field(default_factory=dict)  # stage -> summary.json (finished stages)
    metrics: dict[str, list[dict]] = field(default_factory=dict)  # stage -> metrics.jsonl records

    def summary(self, stage: str) -> dict:
        return self.summaries.get(stage, {})

    def series(self, stage: str, key: str, x: str = "step") -> tuple[list[float], list[float]]:
        """(x values, y values) of the records of `stage` that have `key`."""
        rows = [r for r in self.metrics.get(stage, []) if _number(r.get(key)) is not None and x in r]
        return [r[x] for r in rows], [r[key] for r in rows]


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {i}: not JSON ({e.msg})") from None
    return rows


def read_run(out: Path) -> RunFiles:
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"no run directory {out}; run `picochat run --out {out}` first")
    run = RunFiles(out)
    for stage in STAGE_NAMES:
        summary, metrics = out / stage / "summary.json", out / stage / "metrics.jsonl"
        if summary.exists():
            try:
                run.summaries[stage] = json.loads(summary.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{summary}: not JSON ({e.msg} at line {e.lineno})") from None
        if metrics.exists():
            run.metrics[stage] = _read_jsonl(metrics)
    return run


def stage_figures(run: RunFiles, stage: str) -> dict:
    """The per-stage row of the report: wall-clock, tokens, tokens/s, MFU, peak memory (None = not
    recorded). Peak memory is the process's peak RSS during the stage where the pipeline measured
    it, else the training loop's own figure (the CUDA allocator peak on a GPU)."""
    s = run.summary(stage)
    peak = _number(s.get("peak_rss_mb"))
    if peak is None:
        peak = _number(s.get("peak_memory_mb"))
    return {
        "wall_s": _number(s.get("wall_s")),
        "tokens": _number(s.get("tokens")),
        "tokens_per_s": _number(s.get("tokens_per_s")),
        "mfu": _number(s.get("mfu")),
        "peak_memory_mb": peak,
    }
