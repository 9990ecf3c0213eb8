"""How fast the benchmark card scores: items per second of each task, at the tiny and small sizes.

Random-init models of the `tiny` and `small` presets' architectures (speed does not depend on the
weights) with the vocabulary of a run's tokenizer, scored on the first N items of each task in the
log-likelihood form (GSM8K: greedy answers), fp32 and bf16. A multiple-choice item is one padded
sequence per choice; a GSM8K item is a prompt and up to --max-new-tokens greedy tokens.

    python -m bench.benchmark_card --tokenizer runs/tiny/tokenizer --data-dir ../shared/data/eval --limit 100
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from bench.machine import machine_info
from bench.report import emit_json
from picochat.config import BENCHMARK_TASKS, build_config
from picochat.core.model import GPT
from picochat.core.tokenizer import Tokenizer
from picochat.eval.benchmarks.card import evaluate_task
from picochat.eval.benchmarks.tasks import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="a tokenizer.json or a directory holding one")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--tasks", default=",".join(BENCHMARK_TASKS))
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = Tokenizer.load(args.tokenizer)
    loaded = [load_task(name, args.data_dir, limit=args.limit) for name in args.tasks.split(",")]
    results = []
    for preset in args.presets.split(","):
        torch.manual_seed(0)
        cfg = dataclasses.replace(build_config(preset).model, vocab_size=-(-tokenizer.vocab_size // 64) * 64)
        model = GPT(cfg).eval()
        params = sum(p.numel() for p in model.parameters())
        for precision in args.precisions.split(","):
            for lt in loaded:
                r = evaluate_task(model, tokenizer, lt, "loglik", precision=precision,
                                  max_new_tokens=args.max_new_tokens)
                results.append({"preset": preset, "params": params, "precision": precision, "task": lt.task.name,
                                "items": r["n"], "items_per_s": r["items_per_s"], "seconds": r["seconds"]})
                print(f"{preset:6s} {params / 1e6:6.1f}M {precision:5s} {lt.task.name:15s} {r['n']:5d} items "
                      f"{r['items_per_s']:8.1f} items/s", flush=True)
    emit_json("benchmark_card", {"machine": machine_info(), "threads": args.threads, "results": results})


if __name__ == "__main__":
    main()
