"""`picochat export`: write a model as a Hugging Face (Llama) checkpoint."""

from __future__ import annotations

import argparse
import json

from picochat.core.checkpoint import CONFIG_FILE
from picochat.hf.export import DTYPES, export_model

HELP = "export a model as a Hugging Face (Llama) checkpoint"
DESCRIPTION = ("Write config.json, model.safetensors, tokenizer files with the chat template and a model card, "
               "loadable with transformers (a reward model as LlamaForSequenceClassification).")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True,
                        help="model or stage directory, e.g. runs/tiny/ppo (or runs/tiny/rm for the reward model)")
    parser.add_argument("--out", required=True, help="directory to write the Hugging Face checkpoint into")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                        help="weight dtype in model.safetensors (default float32: exactly picochat's weights)")


def cmd_export(args) -> int:
    out = export_model(args.ckpt, args.out, args.dtype)
    config = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))
    print(f"[export] {args.ckpt} -> {out} ({config['architectures'][0]}, {config['num_hidden_layers']} layers, "
          f"vocab {config['vocab_size']}, {args.dtype}); load it with "
          f"transformers.AutoModelFor{'SequenceClassification' if 'reward_gain' in config else 'CausalLM'}"
          f".from_pretrained({str(out)!r})")
    return 0
