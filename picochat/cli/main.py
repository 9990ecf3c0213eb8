"""The one entry point: `picochat <command> [options] [key=value ...]`.

Every stage is a command of its own and `picochat run` runs them in order. Config comes from the
preset (default `tiny`), or from `<out>/config.yaml` when the run directory already has one, then
`--config FILE`, then `key=value` overrides (`train.lr=3e-4` means the command's own section).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

STAGE_HELP = {
    "world": "generate the built-in fictional world and its EN/ZH pretraining corpus",
    "tokenizer": "train the byte-level BPE tokenizer on the corpus",
    "pretrain": "pretrain the GPT on the corpus (next-token prediction)",
    "sft": "supervised fine-tuning on chat demonstrations (assistant-token loss), with gold-score eval",
    "label": "human feedback: sample K answers per prompt from the SFT model and rank them (--auto: built-in labeler)",
    "rm": "train the reward model on the rankings (pairwise loss over all pairs of a prompt)",
    "ppo": "RLHF: optimise the SFT policy against the reward model with PPO and a KL penalty to SFT",
    "dpo": "direct preference optimisation on the same rankings: the cheaper alternative to RM + PPO",
}

EPILOG = """\
overrides: key=value after the options, dotted into the config, e.g.
  picochat pretrain --out runs/tiny train.max_steps=200 train.lr=1e-3
  picochat run --out runs/big model.d_model=256 pretrain.seq_len=512
presets: picochat/configs/*.yaml (tiny = laptop CPU, small = one GPU, gpt2 = 124M, many GPUs;
  real-data recipes: sentiment, hh, chinese)
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/tiny", help="run directory; each stage writes <out>/<stage>/ (default: runs/tiny)")
    p.add_argument("--preset", default=None, help="config preset: tiny (default), small, gpt2; real-data recipes: "
                   "sentiment, hh, chinese")
    p.add_argument("--config", default=None, help="a YAML file of config values, applied over the preset")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (see below)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="picochat",
        description="Train your own ChatGPT-style assistant from nothing, by the full recipe.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    run = sub.add_parser("run", help="run the whole pipeline (or --stages a,b)", epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(run)
    run.add_argument("--stages", default=None, help="comma-separated subset of stages: world,tokenizer,pretrain,sft,label,rm,ppo,dpo,report "
                     "(default: the run's `stages`, all of them unless the preset says otherwise, then the report)")

    rp = sub.add_parser("report", help="write <out>/report.md and <out>/plots/ from a run's files",
                        description="Rewrite the run's report: per-stage figures, curves, before/after tables of every "
                                    "model on the same held-out prompts (the model comparison is reused while the "
                                    "models are unchanged), and sample conversations.",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(rp)

    for name, help_text in STAGE_HELP.items():
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_config_args(p)
        p.add_argument("--force", action="store_true", help="redo the stage even if it is complete")
        if name == "label":
            p.add_argument("--auto", action="store_true",
                           help="rank with the built-in labeler (the gold scorer plus simulated annotator noise)")

    from picochat.cli.chat import add_chat_arguments

    c = sub.add_parser("chat", help="chat with a model in the terminal",
                       description="Multi-turn chat in the terminal; /reset starts over, /quit leaves.")
    add_chat_arguments(c)

    sc = sub.add_parser("score", help="score answers with a reward model",
                        description="Score (prompt, response) pairs with a trained reward model (normalised scores).")
    sc.add_argument("--ckpt", required=True, help="reward model directory, e.g. runs/tiny/rm")
    sc.add_argument("--prompt", help="the user message")
    sc.add_argument("--response", action="append", help="a response to score (repeat to compare several)")
    sc.add_argument("--file", help="JSONL of preference records or {\"prompt\", \"response\"} lines; scores go to stdout")
    sc.add_argument("--raw", action="store_true", help="print raw scores, without the fitted normalisation")

    from picochat.cli.serve import add_serve_arguments

    sv = sub.add_parser("serve", help="OpenAI-compatible API server with a web chat page and a labeling page",
                        description="Serve a model over HTTP: OpenAI's chat/completions API (batched), a chat page "
                                    "at /, a page at /label where people rank answers into a preference JSONL, "
                                    "and reward-model scores at /v1/score (--rm).")
    add_serve_arguments(sv)

    from picochat.hf.export import add_export_arguments

    ex = sub.add_parser("export", help="export a model as a Hugging Face (Llama) checkpoint",
                        description="Write config.json, model.safetensors, tokenizer files with the chat template "
                                    "and a model card, loadable with transformers (a reward model as "
                                    "LlamaForSequenceClassification).")
    add_export_arguments(ex)

    s = sub.add_parser("sample", help="sample text from a trained model",
                       description="Continue a prompt with a trained model (batched KV-cache sampling).")
    s.add_argument("--ckpt", required=True, help="model directory, or a stage directory such as runs/tiny/pretrain")
    s.add_argument("--prompt", action="append", default=None, help="prompt text (repeat for a batch)")
    s.add_argument("--max-new-tokens", type=int, default=100)
    s.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    s.add_argument("--top-k", type=int, default=0, help="0 = off")
    s.add_argument("--top-p", type=float, default=0.95, help="1 = off")
    s.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    s.add_argument("--seed", type=int, default=None)
    return parser


def _config_for(args, default_section: str | None):
    from picochat.config import build_config, parse_overrides

    overrides = parse_overrides(args.overrides, default_section=default_section)
    saved = Path(args.out) / "config.yaml"
    if args.preset is None and saved.exists():
        # Continue the run with the config it was started with, so its stages stay up to date.
        return build_config(preset=None, base_file=saved, config_file=args.config, overrides=overrides)
    return build_config(preset=args.preset or "tiny", config_file=args.config, overrides=overrides)


def _cmd_sample(args) -> None:
    import torch

    from picochat.layout import load_model
    from picochat.config import SampleConfig
    from picochat.core.tokenizer import Tokenizer
    from picochat.train.pretrain import sample_texts
    from picochat.core.precision import default_device, resolve_precision

    device = default_device()
    model, meta = load_model(args.ckpt, device)
    tokenizer = Tokenizer.load(Path(meta["model_dir"]) / "tokenizer.json")
    prompts = (args.prompt or [""]) * args.num_samples
    scfg = SampleConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, seed=args.seed if args.seed is not None else torch.seed() % 2**31)
    for i, text in enumerate(sample_texts(model, tokenizer, prompts, scfg, resolve_precision("auto", device))):
        print(f"--- sample {i + 1} ---\n{text}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from picochat.config import ConfigError
    from picochat.data.readers import CorpusError

    try:
        if args.command == "sample":
            _cmd_sample(args)
            return 0
        if args.command == "score":
            from picochat.cli.score import cmd_score

            return cmd_score(args)
        if args.command == "label" and not args.auto:
            raise ValueError(f"people rank answers in the labeling web page: run `picochat serve --ckpt "
                             f"{Path(args.out) / 'sft'} --label-prompts PROMPTS.jsonl` and open "
                             "http://127.0.0.1:8000/label (rankings go to <out>/human_labels/preferences.jsonl); "
                             "or use `picochat label --auto` for the built-in labeler")
        if args.command == "serve":
            from picochat.cli.serve import cmd_serve

            return cmd_serve(args)
        if args.command == "chat":
            from picochat.cli.chat import cmd_chat

            return cmd_chat(args)
        if args.command == "export":
            from picochat.hf.export import cmd_export

            return cmd_export(args)
        if args.command == "report":
            from picochat.report import write_report

            write_report(_config_for(args, default_section="report"), Path(args.out), show_progress=not args.no_progress)
            return 0
        from picochat.core import distributed
        from picochat.run.pipeline import run_pipeline, run_stage

        with distributed.session():  # under torchrun: join the process group, rank 0 prints
            if args.command == "run":
                cfg = _config_for(args, default_section=None)
                stages = args.stages.split(",") if args.stages else None
                run_pipeline(cfg, Path(args.out), stages, show_progress=not args.no_progress)
            else:
                cfg = _config_for(args, default_section=args.command if args.command != "world" else "world")
                run_stage(args.command, cfg, Path(args.out), show_progress=not args.no_progress, force=args.force)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ConfigError, CorpusError, FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"picochat {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
