"""`picochat export`: write a model as a Hugging Face (Llama) checkpoint, or as one GGUF file for
llama.cpp and Ollama."""

from __future__ import annotations

import argparse
import json

from picochat.core.checkpoint import CONFIG_FILE
from picochat.hf.export import DTYPES, export_model
from picochat.hf.gguf import GGUF_DTYPES, export_gguf

HELP = "export a model as a Hugging Face (Llama) checkpoint, or a GGUF file for llama.cpp/Ollama"
DESCRIPTION = ("--format hf (default): config.json, model.safetensors, tokenizer files with the chat template and a "
               "model card, loadable with transformers (a reward model as LlamaForSequenceClassification). "
               "--format gguf: one .gguf file (weights, BPE vocabulary and merges, ChatML template) for llama.cpp, "
               "Ollama and LM Studio, with an Ollama Modelfile beside it; needs `pip install 'picochat[gguf]'`.")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True,
                        help="model or stage directory, e.g. runs/tiny/ppo (or runs/tiny/rm for the reward model)")
    parser.add_argument("--out", required=True,
                        help="hf: directory to write the checkpoint into; gguf: the .gguf file to write")
    parser.add_argument("--format", choices=("hf", "gguf"), default="hf", help="hf (default) or gguf")
    parser.add_argument("--dtype", choices=sorted(DTYPES) + list(GGUF_DTYPES),
                        help="hf: float32 (default: exactly picochat's weights), bfloat16 or float16; "
                             "gguf: f16 (default), f32, bf16 or q8_0 (8-bit blocks)")


def cmd_export(args) -> int:
    if args.format == "gguf":
        dtype = args.dtype or "f16"
        if dtype not in GGUF_DTYPES:
            raise ValueError(f"--format gguf takes --dtype {', '.join(GGUF_DTYPES)}, got {dtype!r}")
        result = export_gguf(args.ckpt, args.out, dtype)
        print(f"[export] {args.ckpt} -> {result['path']} ({dtype}, {result['bytes'] / 1e6:.1f} MB) and "
              f"{result['modelfile']}; run it with `llama-cli -m {result['path']}` or "
              f"`ollama create NAME -f {result['modelfile']}`")
        if not result["pre_tokenizer_exact"]:
            print("[export] warning: this tokenizer was trained before picochat split text the way llama.cpp's "
                  "'refact' pre-tokenizer does; llama.cpp tokenizes runs of spaces or newlines right before a "
                  "Chinese or Japanese character differently (about 1.5% of the demo corpus's documents). "
                  "Retrain the tokenizer (and the model) for an exact match.")
        return 0
    dtype = args.dtype or "float32"
    if dtype not in DTYPES:
        raise ValueError(f"--format hf takes --dtype {', '.join(sorted(DTYPES))}, got {dtype!r}")
    out = export_model(args.ckpt, args.out, dtype)
    config = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))
    print(f"[export] {args.ckpt} -> {out} ({config['architectures'][0]}, {config['num_hidden_layers']} layers, "
          f"vocab {config['vocab_size']}, {dtype}); load it with "
          f"transformers.AutoModelFor{'SequenceClassification' if 'reward_gain' in config else 'CausalLM'}"
          f".from_pretrained({str(out)!r})")
    return 0
