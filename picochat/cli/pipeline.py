"""`picochat run`, `picochat report` and one command per stage: the commands that read a run's config.

Config comes from the preset (default `tiny`), or from `<out>/config.yaml` when the run directory
already has one, then `--config FILE`, then `key=value` overrides (`train.lr=3e-4` means the
command's own section).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from picochat.config import RunConfig, build_config, parse_overrides
from picochat.core import distributed
from picochat.report import write_report
from picochat.run.pipeline import run_pipeline, run_stage

STAGE_HELP = {
    "world": "generate the built-in fictional world and its EN/ZH pretraining corpus",
    "tokenizer": "train the byte-level BPE tokenizer on the corpus",
    "pretrain": "pretrain the GPT on the corpus (next-token prediction)",
    "sft": "supervised fine-tuning on chat demonstrations (assistant-token loss), with gold-score eval",
    "label": "human feedback: sample K answers per prompt from the SFT model and rank them "
             "(--auto: built-in labeler)",
    "rm": "train the reward model on the rankings (pairwise loss over all pairs of a prompt)",
    "ppo": "RLHF: optimise the SFT policy against the reward model with PPO and a KL penalty to SFT",
    "dpo": "direct preference optimisation on the same rankings: the cheaper alternative to RM + PPO",
    "rounds": "iterated RLHF (rlhf.rounds=N): rank the policy's answers, retrain the reward model, PPO again",
}
# The config section a stage command's undotted overrides belong to, where it is not the stage's name
STAGE_SECTION = {"rounds": "rlhf"}
RUN_HELP = "run the whole pipeline (or --stages a,b)"
REPORT_HELP = "write <out>/report.md and <out>/plots/ from a run's files"
REPORT_DESCRIPTION = ("Rewrite the run's report: per-stage figures, curves, before/after tables of every model on "
                      "the same held-out prompts (the model comparison is reused while the models are unchanged), "
                      "and sample conversations.")

EPILOG = """\
overrides: key=value after the options, dotted into the config, e.g.
  picochat pretrain --out runs/tiny train.max_steps=200 train.lr=1e-3
  picochat run --out runs/big model.d_model=256 pretrain.seq_len=512
presets: picochat/configs/*.yaml (tiny = laptop CPU, small = one GPU, gpt2 = 124M, many GPUs;
  real-data recipes: sentiment, hh, chinese)
"""


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/tiny",
                   help="run directory; each stage writes <out>/<stage>/ (default: runs/tiny)")
    p.add_argument("--preset", default=None, help="config preset: tiny (default), small, gpt2; real-data recipes: "
                   "sentiment, hh, chinese")
    p.add_argument("--config", default=None, help="a YAML file of config values, applied over the preset")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (see below)")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--stages", default=None,
                   help="comma-separated subset of stages: world,tokenizer,pretrain,sft,label,rm,ppo,dpo,rounds,report "
                        "(default: the run's `stages`, all of them unless the preset says otherwise, then the report)")


def add_stage_arguments(stage: str, p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--force", action="store_true", help="redo the stage even if it is complete")
    if stage == "label":
        p.add_argument("--auto", action="store_true",
                       help="rank with the built-in labeler (the gold scorer plus simulated annotator noise)")


def config_for(args, default_section: str | None) -> RunConfig:
    overrides = parse_overrides(args.overrides, default_section=default_section)
    saved = Path(args.out) / "config.yaml"
    if args.preset is None and saved.exists():
        # Continue the run with the config it was started with, so its stages stay up to date.
        return build_config(preset=None, base_file=saved, config_file=args.config, overrides=overrides)
    return build_config(preset=args.preset or "tiny", config_file=args.config, overrides=overrides)


def cmd_run(args) -> int:
    with distributed.session():  # under torchrun: join the process group, rank 0 prints
        cfg = config_for(args, default_section=None)
        stages = args.stages.split(",") if args.stages else None
        run_pipeline(cfg, Path(args.out), stages, show_progress=not args.no_progress)
    return 0


def cmd_report(args) -> int:
    write_report(config_for(args, default_section="report"), Path(args.out), show_progress=not args.no_progress)
    return 0


def cmd_stage(stage: str, args) -> int:
    if stage == "label" and not args.auto:
        raise ValueError(f"people rank answers in the labeling web page: run `picochat serve --ckpt "
                         f"{Path(args.out) / 'sft'} --label-prompts PROMPTS.jsonl` and open "
                         "http://127.0.0.1:8000/label (rankings go to <out>/human_labels/preferences.jsonl); "
                         "or use `picochat label --auto` for the built-in labeler")
    with distributed.session():
        cfg = config_for(args, default_section=STAGE_SECTION.get(stage, stage))
        run_stage(stage, cfg, Path(args.out), show_progress=not args.no_progress, force=args.force)
    return 0
