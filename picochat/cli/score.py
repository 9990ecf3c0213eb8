"""`picochat score`: score answers with a reward model, from the command line or a JSONL file.

    picochat score --ckpt runs/tiny/rm --prompt "What is 2 + 3?" --response "5." --response "7."
    picochat score --ckpt runs/tiny/rm --file answers.jsonl > scored.jsonl

A file may hold preference records (every response of each record is scored, in order) or lines
`{"prompt": str | messages, "response": str}`. Output: one JSON line per input line with "scores".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from picochat.core.precision import default_device
from picochat.data.preferences import parse_record
from picochat.data.readers import CorpusError, iter_json_lines
from picochat.reward_model import load_reward_model

HELP = "score answers with a reward model"
DESCRIPTION = "Score (prompt, response) pairs with a trained reward model (normalised scores)."


def add_score_arguments(sc: argparse.ArgumentParser) -> None:
    sc.add_argument("--ckpt", required=True, help="reward model directory, e.g. runs/tiny/rm")
    sc.add_argument("--prompt", help="the user message")
    sc.add_argument("--response", action="append", help="a response to score (repeat to compare several)")
    sc.add_argument("--file", help="JSONL of preference records or {\"prompt\", \"response\"} lines; "
                    "scores go to stdout")
    sc.add_argument("--raw", action="store_true", help="print raw scores, without the fitted normalisation")


def _prompt_messages(prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def cmd_score(args, stdout=None) -> int:
    stdout = stdout or sys.stdout  # looked up per call: tests and pipes replace sys.stdout
    rm = load_reward_model(args.ckpt, default_device())
    normalized = not args.raw
    if args.file:
        for line_no, obj in iter_json_lines(Path(args.file)):
            where = f"{args.file}, line {line_no}"
            if isinstance(obj, dict) and "response" in obj and "prompt" in obj:
                prompt, responses = _prompt_messages(obj["prompt"]), [obj["response"]]
                if not isinstance(obj["response"], str):
                    raise CorpusError(args.file, "'response' must be a string", line_no)
            else:
                record = parse_record(obj, where)
                prompt, responses = record.prompt, record.responses
            scores = rm.score([prompt] * len(responses), responses, normalized=normalized)
            scored = {**(obj if isinstance(obj, dict) else {}), "scores": scores}
            stdout.write(json.dumps(scored, ensure_ascii=False) + "\n")
        return 0
    if not args.prompt or not args.response:
        raise ValueError("give --prompt and at least one --response, or --file")
    scores = rm.score([_prompt_messages(args.prompt)] * len(args.response), args.response, normalized=normalized)
    for response, score in sorted(zip(args.response, scores), key=lambda x: -x[1]):
        stdout.write(f"{score:+.3f}  {response}\n")
    return 0
