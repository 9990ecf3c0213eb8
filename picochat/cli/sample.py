"""`picochat sample`: continue prompts with a trained model (batched KV-cache sampling)."""

from __future__ import annotations

import argparse

import torch

from picochat.config import SampleConfig
from picochat.core.precision import default_device, resolve_precision
from picochat.layout import load_model_and_tokenizer
from picochat.train.pretrain import sample_texts

HELP = "sample text from a trained model"
DESCRIPTION = "Continue a prompt with a trained model (batched KV-cache sampling)."


def add_sample_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--ckpt", required=True, help="model directory, or a stage directory such as runs/tiny/pretrain")
    s.add_argument("--prompt", action="append", default=None, help="prompt text (repeat for a batch)")
    s.add_argument("--max-new-tokens", type=int, default=100)
    s.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    s.add_argument("--top-k", type=int, default=0, help="0 = off")
    s.add_argument("--top-p", type=float, default=0.95, help="1 = off")
    s.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    s.add_argument("--seed", type=int, default=None)


def cmd_sample(args) -> int:
    device = default_device()
    model, tokenizer, _ = load_model_and_tokenizer(args.ckpt, device)
    prompts = (args.prompt or [""]) * args.num_samples
    scfg = SampleConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, seed=args.seed if args.seed is not None else torch.seed() % 2**31)
    for i, text in enumerate(sample_texts(model, tokenizer, prompts, scfg, resolve_precision("auto", device))):
        print(f"--- sample {i + 1} ---\n{text}")
    return 0
