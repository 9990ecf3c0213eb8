"""`picochat export --ckpt DIR --out DIR`: a picochat model as a Hugging Face Llama checkpoint.

Writes what `transformers` (and so vLLM, llama.cpp's converter, Ollama) expects:
  config.json              LlamaConfig (LlamaForCausalLM; a reward model is a
                           LlamaForSequenceClassification with one label, plus reward_gain/bias)
  model.safetensors        the weights under their HF names (picochat uses HF's names already)
  generation_config.json   stop tokens and picochat's sampling defaults (not for a reward model)
  tokenizer.json           the byte-level BPE tokenizer, unchanged
  tokenizer_config.json    the ChatML chat template as Jinja, eos and pad tokens
  README.md                a model card with the run's figures from the stage's summary.json
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from picochat.core.chat import TOKENIZER_CONFIG_FILE, write_tokenizer_config
from picochat.core.checkpoint import CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, load_model_dir
from picochat.core.io import atomic_write, atomic_write_json, atomic_write_text
from picochat.core.model import GPT, ModelConfig
from picochat.core.tokenizer import EOT, IM_END, Tokenizer
from picochat.hf.llama_config import llama_config_dict
from picochat.hf.model_card import model_card

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GENERATION_CONFIG_FILE = "generation_config.json"
CARD_FILE = "README.md"
SUMMARY_FILE = "summary.json"


def model_kind(cfg: ModelConfig, meta: dict) -> str:
    """"reward" (scalar head), "base" (a pretrained model: documents, no chat) or "chat"."""
    if cfg.head == "scalar":
        return "reward"
    return "base" if meta.get("stage") == "pretrain" else "chat"


def hf_state_dict(model: GPT, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Weights under HF names, each its own contiguous tensor; a tied lm_head is left out, as
    transformers stores it (it re-ties on load from tie_word_embeddings)."""
    tensors = {name: t.detach().to(dtype).contiguous() for name, t in model.state_dict().items()}
    if model.cfg.head == "lm" and model.cfg.tie_embeddings:
        del tensors["lm_head.weight"]
    return tensors


def find_summary(model_dir: Path) -> dict | None:
    """The stage's summary.json, which sits next to its final model. An intermediate checkpoint
    has none: the figures of the finished stage would not describe it."""
    path = model_dir / SUMMARY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def generation_config(kind: str, tokenizer: Tokenizer) -> dict:
    """Stop tokens and the sampling defaults of `picochat chat` (chat) or `picochat sample` (base)."""
    if kind == "chat":
        sampling = {"do_sample": True, "temperature": 0.7, "top_p": 0.95, "max_new_tokens": 256}
        eos = [tokenizer.im_end_id, tokenizer.eot_id]
    else:
        sampling = {"do_sample": True, "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 100}
        eos = tokenizer.eot_id
    return {"bos_token_id": tokenizer.eot_id, "eos_token_id": eos, "pad_token_id": tokenizer.pad_id, **sampling}


def export_model(ckpt: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """Export the model at `ckpt` (a model/stage directory, or hf:DIR) into `out`; return `out`."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    model, meta = load_model_dir(ckpt, "cpu")
    model_dir = Path(meta["model_dir"])
    tokenizer = Tokenizer.load(model_dir / TOKENIZER_FILE)
    cfg = model.cfg
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"{model_dir}: the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                         f"{cfg.vocab_size} embedding rows")
    kind = model_kind(cfg, meta)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    tensors = hf_state_dict(model, DTYPES[dtype])
    atomic_write(out / MODEL_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    eos = generation_config("chat" if kind == "reward" else kind, tokenizer)["eos_token_id"]
    config = llama_config_dict(cfg, bos_token_id=tokenizer.eot_id, eos_token_id=eos,
                               pad_token_id=tokenizer.pad_id, dtype=dtype)
    normalization = None
    if kind == "reward":
        norm = meta.get("reward_normalization") or {}
        normalization = {"gain": float(norm.get("gain", 1.0)), "bias": float(norm.get("bias", 0.0))}
        config["reward_gain"], config["reward_bias"] = normalization["gain"], normalization["bias"]
    config["picochat"] = {k: meta[k] for k in ("stage", "step", "init") if k in meta}
    atomic_write_json(out / CONFIG_FILE, config)
    if kind == "reward":
        (out / GENERATION_CONFIG_FILE).unlink(missing_ok=True)  # a reward model does not generate
    else:
        atomic_write_json(out / GENERATION_CONFIG_FILE, generation_config(kind, tokenizer))

    if (model_dir / TOKENIZER_FILE).resolve() != (out / TOKENIZER_FILE).resolve():
        atomic_write(out / TOKENIZER_FILE, lambda p: shutil.copyfile(model_dir / TOKENIZER_FILE, p))
    write_tokenizer_config(out, model_max_length=cfg.max_seq_len, eos_token=EOT if kind == "base" else IM_END)
    card = model_card(cfg, meta, kind, find_summary(model_dir), model.num_params(), normalization, repo=str(out))
    atomic_write_text(out / CARD_FILE, card)
    make_shareable(out)
    return out


def make_shareable(out: Path) -> None:
    """Give the exported files the permissions of a normal file (atomic writes create them 0600):
    an export is for others — an upload, a server running as another user."""
    umask = os.umask(0)
    os.umask(umask)
    for name in (CONFIG_FILE, MODEL_FILE, GENERATION_CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, CARD_FILE):
        if (out / name).exists():
            os.chmod(out / name, 0o666 & ~umask)
