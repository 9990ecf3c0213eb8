"""PPO and DPO, then the report, one after the other against side by side (`side_by_side`).

Copies a finished run's stages up to the reward model (and the SFT stage's cached answers, as the
demo has them when PPO starts) into fresh directories, then times `picochat run --stages ppo,dpo`
and `picochat report` with `side_by_side=false` (2 threads each, in turn) and `true` (1 thread
each, two processes), alternating the modes so that a change in the machine's speed falls on
both. Nothing else should run meanwhile: this measures how two processes share the cores.

    python -m bench.side_by_side --run runs/tiny --windows 2
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

COPIED = ("world", "tokenizer", "pretrain", "sft", "label", "rm")


def fresh_copy(run: Path, dest: Path) -> Path:
    """The run up to its reward model, with the answers its SFT stage cached and nothing later."""
    for stage in COPIED:
        shutil.copytree(run / stage, dest / stage, ignore=shutil.ignore_patterns("checkpoint", "checkpoint.old"))
    shutil.copy(run / "config.yaml", dest / "config.yaml")
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
    args = parser.parse_args(argv)
    for stage in COPIED:
        if not (args.run / stage / "summary.json").exists():
            parser.error(f"{args.run / stage} is not a finished stage: run `make demo` (or picochat run) first")
    picochat = [sys.executable, "-m", "picochat"]
    times: dict[str, dict[str, list[float]]] = {m: {"ppo+dpo": [], "report": []} for m in ("false", "true")}
    with tempfile.TemporaryDirectory(prefix="side_by_side.") as tmp:
        for window in range(args.windows):
            for mode in ("false", "true"):
                out = fresh_copy(args.run, Path(tmp) / f"{mode}_{window}")
                setting = f"side_by_side={mode}"
                times[mode]["ppo+dpo"].append(timed([*picochat, "run", "--out", str(out), "--no-progress",
                                                     "--stages", "ppo,dpo", setting], out / "rl.log"))
                times[mode]["report"].append(timed([*picochat, "report", "--out", str(out), "--no-progress", setting],
                                                   out / "report.log"))
                print(f"window {window + 1}, side_by_side={mode}: PPO + DPO {times[mode]['ppo+dpo'][-1]:.1f} s, "
                      f"report {times[mode]['report'][-1]:.1f} s", flush=True)
    for part in ("ppo+dpo", "report"):
        before, after = median(times["false"][part]), median(times["true"][part])
        print(f"{part}: one after the other {before:.1f} s, side by side {after:.1f} s (medians): "
              f"{before / after:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
