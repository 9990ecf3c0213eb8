"""Labeling, PPO and DPO, then the report, in one process against two (`side_by_side`).

Copies a finished run's stages up to the SFT model into a fresh directory and times
`picochat run --stages label`; copies them up to the reward model (and the SFT stage's cached
answers, as the demo has them when PPO starts) into another and times `picochat run --stages
ppo,dpo`, then `picochat report`. Each with `side_by_side=false` (2 threads, one process) and
`true` (1 thread each, two processes), alternating the modes so that a change in the machine's
speed falls on both. Nothing else should run meanwhile: this measures how two processes share
the cores.

    python -m bench.side_by_side --run runs/tiny --windows 2
    python -m bench.side_by_side --run runs/tiny --parts label
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import median

UP_TO_SFT = ("world", "tokenizer", "pretrain", "sft")
COPIED = (*UP_TO_SFT, "label", "rm")
PARTS = ("label", "ppo+dpo", "report")


def copy_stages(run: Path, dest: Path, stages: tuple[str, ...]) -> Path:
    for stage in stages:
        shutil.copytree(run / stage, dest / stage, ignore=shutil.ignore_patterns("checkpoint", "checkpoint.old"))
    shutil.copy(run / "config.yaml", dest / "config.yaml")
    return dest


def fresh_copy(run: Path, dest: Path) -> Path:
    """The run up to its reward model, with the answers its SFT stage cached and nothing later."""
    copy_stages(run, dest, COPIED)
    answers = dest / "cache" / "answers"
    answers.mkdir(parents=True)
    sft_done = (run / "sft" / "summary.json").stat().st_mtime
    for entry in (run / "cache" / "answers").glob("*.json"):
        if entry.stat().st_mtime <= sft_done + 1:
            shutil.copy(entry, answers / entry.name)
    return dest


def timed(command: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/tiny"), help="a finished run (make demo's)")
    parser.add_argument("--windows", type=int, default=2, help="timings of each mode, alternating")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="what to time, of label, ppo+dpo and report (the report needs ppo+dpo)")
    args = parser.parse_args(argv)
    parts = [p for p in PARTS if p in args.parts.split(",")]
    if not parts or set(args.parts.split(",")) - set(PARTS) or ("report" in parts and "ppo+dpo" not in parts):
        parser.error(f"--parts takes some of {', '.join(PARTS)}, and report only with ppo+dpo; got {args.parts!r}")
    for stage in COPIED:
        if not (args.run / stage / "summary.json").exists():
            parser.error(f"{args.run / stage} is not a finished stage: run `make demo` (or picochat run) first")
    picochat = [sys.executable, "-m", "picochat"]
    times: dict[str, dict[str, list[float]]] = {m: {p: [] for p in parts} for m in ("false", "true")}
    with tempfile.TemporaryDirectory(prefix="side_by_side.") as tmp:
        for window in range(args.windows):
            for mode in ("false", "true"):
                setting = f"side_by_side={mode}"
                if "label" in parts:
                    out = copy_stages(args.run, Path(tmp) / f"label_{mode}_{window}", UP_TO_SFT)
                    times[mode]["label"].append(timed([*picochat, "run", "--out", str(out), "--no-progress",
                                                       "--stages", "label", setting], out / "label.log"))
                if "ppo+dpo" in parts:
                    out = fresh_copy(args.run, Path(tmp) / f"{mode}_{window}")
                    times[mode]["ppo+dpo"].append(timed([*picochat, "run", "--out", str(out), "--no-progress",
                                                         "--stages", "ppo,dpo", setting], out / "rl.log"))
                if "report" in parts:
                    times[mode]["report"].append(timed([*picochat, "report", "--out", str(out), "--no-progress",
                                                        setting], out / "report.log"))
                timings = ", ".join(f"{part} {times[mode][part][-1]:.1f} s" for part in parts)
                print(f"window {window + 1}, side_by_side={mode}: {timings}", flush=True)
    for part in parts:
        before, after = median(times["false"][part]), median(times["true"][part])
        print(f"{part}: one process {before:.1f} s, two processes {after:.1f} s (medians): {before / after:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
