"""`picochat eval`: the benchmark card of one model.

    picochat eval --ckpt runs/tiny/sft --data-dir ../shared/data/eval --limit 200
    picochat eval --ckpt runs/small/sft --tasks arc_easy,hellaswag --shots 5 --json card.json
    picochat eval --ckpt DIR --tasks arc_easy --source "arc_easy=hf:allenai/ai2_arc?name=ARC-Easy&split=test"

Prints one table per form and, with --json, writes every figure (and per-item results) as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from picochat.config import BENCHMARK_TASKS, EVAL_FORMS, EvalConfig
from picochat.core.io import atomic_write_json
from picochat.eval.benchmarks.card import card_forms, card_markdown, evaluate_card
from picochat.eval.benchmarks.tasks import load_task, task_names
from picochat.layout import load_model_and_tokenizer

HELP = "score a model on standard benchmarks (ARC, HellaSwag, CMMLU, GSM8K, ...)"
DESCRIPTION = (
    "The benchmark card of one model: multiple-choice sets scored by the log-likelihood of each choice "
    "(acc and length-normalised acc_norm, as lm-evaluation-harness computes them), GSM8K by greedy answers, "
    "and for chat models also the chat form (the question in the chat template, the answer read from the "
    "reply). Each score comes with a 95% interval, the chance level and a centred score (0 = chance, "
    "1 = perfect); CORE is their mean.")
_DEFAULTS = EvalConfig()


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="model directory, e.g. runs/tiny/sft (or hf:DIR)")
    p.add_argument("--tasks", default=",".join(BENCHMARK_TASKS),
                   help=f"comma-separated tasks (default: all of {','.join(BENCHMARK_TASKS)})")
    p.add_argument("--data-dir", default="",
                   help="folder of local copies named as in shared/data/eval (arc_easy_test.jsonl.gz, "
                        "hellaswag_val.jsonl.gz, ...)")
    p.add_argument("--source", action="append", default=[], metavar="TASK=SPEC",
                   help="a task's file or hf: dataset instead of the --data-dir copy (repeatable)")
    p.add_argument("--limit", type=int, default=_DEFAULTS.limit,
                   help=f"the first N items of each task, 0 = all (default {_DEFAULTS.limit})")
    p.add_argument("--shots", type=int, default=0, help="few-shot examples before each question (default 0)")
    p.add_argument("--form", choices=("auto", *EVAL_FORMS, "both"), default="auto",
                   help="loglik, chat or both; auto = both for chat models (SFT/PPO/DPO), loglik otherwise")
    p.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size, help="sequences per forward pass")
    p.add_argument("--max-new-tokens", type=int, default=_DEFAULTS.max_new_tokens, help="GSM8K answer length")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=_DEFAULTS.precision,
                   help="fp32 (comparable with the harness) or bf16 autocast")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--json", help="write the card, with per-item results, to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def forms_for(form: str, stage: str | None) -> list[str]:
    if form == "auto":
        return card_forms(stage)
    return list(EVAL_FORMS) if form == "both" else [form]


def cmd_eval(args, stdout=None) -> int:
    stdout = stdout or sys.stdout
    if args.limit < 0 or args.shots < 0 or args.batch_size < 1 or args.max_new_tokens < 1:
        raise ValueError("--limit and --shots must be >= 0, --batch-size and --max-new-tokens >= 1")
    sources = {}
    for entry in args.source:
        task, sep, spec = entry.partition("=")
        if not sep or not spec:
            raise ValueError(f"--source {entry!r} must read TASK=PATH_OR_HF_SPEC")
        sources[task] = spec
    names = task_names(args.tasks)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, meta = load_model_and_tokenizer(args.ckpt)
    if model.cfg.head != "lm":
        raise ValueError(f"{args.ckpt} is a reward model (one score per answer, no next-token probabilities); "
                         "the benchmark card scores language models: pretrained, SFT, PPO or DPO")
    loaded = [load_task(name, args.data_dir, limit=args.limit, shots=args.shots, source=sources.get(name, ""))
              for name in names]
    card = evaluate_card(model, tokenizer, loaded, forms_for(args.form, meta.get("stage")), shots=args.shots,
                         precision=args.precision, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                         show_progress=not args.no_progress)
    card.update(model=str(args.ckpt), stage=meta.get("stage"), shots=args.shots, limit=args.limit,
                sources={lt.task.name: str(lt.source) for lt in loaded})
    stdout.write(f"# Benchmark card of {args.ckpt}\n\n{card_markdown(card)}")
    for by_task in card["results"].values():
        for name, r in by_task.items():
            stdout.write(f"{r['form']:6s} {name:15s} {r['items_per_s']:7.1f} items/s\n")
    if args.json:
        atomic_write_json(Path(args.json), card)
        stdout.write(f"wrote {args.json}\n")
    else:
        stdout.write(json.dumps({"core": card["core"]}) + "\n")
    return 0
