"""A labeling batch with and without the shared prefill and `inference_mode` (`picochat.core.generate`).

The label stage asks K answers to each prompt in one `generate` call (64 prompts x 8 answers on
the tiny preset). `generate` prefills each distinct prompt once and copies its keys/values to its K
rows, under `torch.inference_mode()`. This times one such batch from a run's SFT model, T=1,
bf16 where the CPU has it, four ways in alternating windows: as committed, with every row
prefilled (as before), under `no_grad` instead of `inference_mode`, and with neither; and checks
that all four sample the same answers.

    python -m bench.shared_prefill --run runs/tiny --windows 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from bench.machine import median
from picochat.core import generate as generate_module
from picochat.core.checkpoint import TOKENIZER_FILE, load_model_dir
from picochat.core.model import KVCache
from picochat.core.precision import autocast, resolve_precision
from picochat.core.prompt import encode_prompt, stop_token_ids
from picochat.core.tokenizer import Tokenizer

SHARED_PREFILL = generate_module._prefill
VARIANTS = {  # name -> (inference_mode, shared prefill)
    "as committed": (True, True),
    "every row prefilled": (True, False),
    "no_grad, not inference_mode": (False, True),
    "neither (before)": (False, False),
}


def prefill_every_row(model, prompts, ids, positions, attention_mask, width):
    """What `generate` did before: one forward over all rows, repeated prompts included."""
    cache = KVCache(model.cfg, len(prompts), width, pack_weights=True)
    return model(ids, position_ids=positions, attention_mask=attention_mask, kv_cache=cache)[:, -1], cache


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/tiny"), help="a run with sft/ and world/")
    parser.add_argument("--prompts", type=int, default=64, help="distinct prompts in the batch")
    parser.add_argument("--k", type=int, default=8, help="answers per prompt")
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, _ = load_model_dir(args.run / "sft", "cpu")
    model.eval()
    tokenizer = Tokenizer.load(args.run / "sft" / TOKENIZER_FILE)
    with open(args.run / "world" / "chat_test.jsonl", encoding="utf-8") as f:
        messages = [json.loads(line)["messages"][:-1] for line in f][: args.prompts]
    prompts = [encode_prompt(tokenizer, m) for m in messages for _ in range(args.k)]
    sampling = generate_module.SamplingConfig(max_new_tokens=args.new_tokens, temperature=1.0, seed=0,
                                              stop_ids=stop_token_ids(tokenizer, messages[0]))
    precision = resolve_precision("auto", torch.device("cpu"))
    undecorated = generate_module.generate.__wrapped__

    def once(inference: bool, shared: bool) -> tuple[float, list[list[int]]]:
        generate_module._prefill = SHARED_PREFILL if shared else prefill_every_row
        t0 = time.perf_counter()
        with torch.inference_mode() if inference else torch.no_grad(), autocast(precision, torch.device("cpu")):
            results = undecorated(model, prompts, sampling, pad_id=tokenizer.pad_id)
        return time.perf_counter() - t0, [r.tokens for r in results]

    try:
        once(True, True)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        answers = {}
        for _ in range(args.windows):
            for name, (inference, shared) in VARIANTS.items():
                seconds, tokens = once(inference, shared)
                times[name].append(seconds)
                answers.setdefault(name, tokens)
                if tokens != answers[name]:
                    raise SystemExit(f"{name}: another window sampled other answers")
    finally:
        generate_module._prefill = SHARED_PREFILL
    before = median(times["neither (before)"])
    print(f"{args.prompts} prompts x {args.k} answers, {args.new_tokens} new tokens, T=1, {precision}, "
          f"{args.threads} thread(s), {args.windows} windows")
    for name in VARIANTS:
        print(f"{name:30s} median {median(times[name]):.2f} s ({', '.join(f'{t:.2f}' for t in times[name])}): "
              f"{before / median(times[name]):.2f}x as fast as before")
    same = all(a == answers["as committed"] for a in answers.values())
    print(f"the same answers in all four: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
