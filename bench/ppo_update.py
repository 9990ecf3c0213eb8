"""One PPO iteration of a run's own settings, with the update leaving out rows whose advantage is 0
(`PPOTrainer.skip_idle_rows`, on wherever it changes nothing) against the update that computes
them, timed alternately in one process.

With the tiny preset's default (best of 4 answers per prompt reinforced, RMSNorm gains only) three
rows of four have advantage 0; the loss, and so the update, is the same either way
(tests/test_ppo.py checks the weights), only the cost differs. Two trainers start from the same
models and iterate on their own; their updates are equal up to float rounding.

    python -m bench.ppo_update --run runs/tiny --threads 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.interleave import interleaved_times, paired_speedup
from bench.machine import machine_info, median
from bench.ppo import parse_iteration_args, picochat_trainer
from bench.report import emit_json, format_table


def run(args) -> dict:
    run_dir = Path(args.run)
    with tempfile.TemporaryDirectory(prefix="bench-ppo-update-") as tmp:
        trainers = {}
        for name, skip in (("idle rows left out", True), ("every row computed", False)):
            work = Path(tmp) / name.replace(" ", "_")
            work.mkdir()
            trainer = picochat_trainer(run_dir, work, args.overrides)
            if not trainer.skip_idle_rows:
                raise SystemExit("these settings have no idle rows to leave out (a value model, or a KL or "
                                 "entropy term in the loss): nothing to compare")
            trainer.skip_idle_rows = skip
            trainers[name] = trainer
        lengths = {name: [] for name in trainers}

        def iteration(name):
            def call():
                lengths[name].append(trainers[name].iterate()["response_length"])
            return call

        times = interleaved_times({name: iteration(name) for name in trainers}, warmup=args.warmup,
                                  windows=args.windows, reps_per_window=1)
    names = list(trainers)
    speedup = paired_speedup(times[names[0]], times[names[1]])
    rows = [{"update": name, "seconds_per_iteration": median(times[name]),
             "speedup": speedup if name == names[0] else 1.0,
             "mean_response_tokens": sum(lengths[name][args.warmup:]) / max(1, len(lengths[name]) - args.warmup),
             "window_seconds": times[name]} for name in names]
    print(f"{names[0]} / {names[1]} = {speedup:.2f}x per PPO iteration", flush=True)
    p = trainers[names[0]].pcfg
    return {"machine": machine_info(), "run": str(run_dir),
            "settings": {"advantage": p.advantage, "samples_per_prompt": p.samples_per_prompt,
                         "rollout_prompts": p.rollout_prompts, "minibatch_size": p.minibatch_size,
                         "epochs": p.epochs, "trainable": p.trainable, "warmup": args.warmup,
                         "windows": args.windows},
            "results": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = parse_iteration_args(p, argv, "config overrides, e.g. ppo.rollout_prompts=64")
    result = run(args)
    print()
    print(format_table(result["results"], [("update", "update"), ("seconds_per_iteration", "s/iteration"),
                                           ("speedup", "x"), ("mean_response_tokens", "response tokens")]))
    emit_json("ppo_update", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
