"""The one entry point: `picochat <command> [options] [key=value ...]`, a table of commands.

Every stage is a command of its own and `picochat run` runs them in order (`picochat.cli.pipeline`);
the other commands use a trained model: chat, score, serve, export, sample. Each command is a
module of this package with an `add_..._arguments(parser)` and a `cmd_...(args) -> exit code`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from picochat.cli import chat, evaluate, export, pipeline, sample, score, serve
from picochat.config import ConfigError
from picochat.data.readers import CorpusError


@dataclass(frozen=True)
class Command:
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    config_epilog: bool = False  # the command reads a run's config: show how overrides work


COMMANDS: dict[str, Command] = {
    "run": Command(pipeline.RUN_HELP, pipeline.RUN_HELP, pipeline.add_run_arguments, pipeline.cmd_run, True),
    "report": Command(pipeline.REPORT_HELP, pipeline.REPORT_DESCRIPTION, pipeline.add_config_arguments,
                      pipeline.cmd_report, True),
    **{stage: Command(text, text, partial(pipeline.add_stage_arguments, stage), partial(pipeline.cmd_stage, stage),
                      config_epilog=True)
       for stage, text in pipeline.STAGE_HELP.items()},
    "chat": Command("chat with a model in the terminal",
                    "Multi-turn chat in the terminal; /reset starts over, /quit leaves.",
                    chat.add_chat_arguments, chat.cmd_chat),
    "eval": Command(evaluate.HELP, evaluate.DESCRIPTION, evaluate.add_eval_arguments, evaluate.cmd_eval),
    "score": Command(score.HELP, score.DESCRIPTION, score.add_score_arguments, score.cmd_score),
    "serve": Command("OpenAI-compatible API server with a web chat page and a labeling page",
                     "Serve a model over HTTP: OpenAI's chat/completions API (batched), a chat page at /, a page "
                     "at /label where people rank answers into a preference JSONL, and reward-model scores at "
                     "/v1/score (--rm).", serve.add_serve_arguments, serve.cmd_serve),
    "export": Command(export.HELP, export.DESCRIPTION, export.add_export_arguments, export.cmd_export),
    "sample": Command(sample.HELP, sample.DESCRIPTION, sample.add_sample_arguments, sample.cmd_sample),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="picochat",
        description="Train your own ChatGPT-style assistant from nothing, by the full recipe.",
        epilog=pipeline.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, command in COMMANDS.items():
        extra = {"epilog": pipeline.EPILOG, "formatter_class": argparse.RawDescriptionHelpFormatter} \
            if command.config_epilog else {}
        command.add_arguments(sub.add_parser(name, help=command.help, description=command.description, **extra))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ConfigError, CorpusError, FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"picochat {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
