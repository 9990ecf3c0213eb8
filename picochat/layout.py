"""Where everything of a run lives, and how a model setting becomes a loaded model.

A run directory `<out>/` holds one directory per stage, in this order:

    world/       world.json, corpus.jsonl, chat_train.jsonl, chat_test.jsonl
    tokenizer/   tokenizer.json
    pretrain/ sft/ rm/ ppo/ dpo/   a model directory (model.safetensors, config.json,
                 tokenizer.json) plus checkpoint/, metrics.jsonl, summary.json
    label/       preferences.jsonl, preferences_test.jsonl
    rounds/      round_<r>/label, rm, ppo: later RLHF rounds (rlhf.rounds > 1)

and config.yaml, report.md, report/, plots/, human_labels/ (people's rankings from the labeling
page) and cache/answers/ (answers a model gave to held-out prompts, which later stages read
instead of sampling them again) beside them. Each stage also writes stage.json (its fingerprint)
and summary.json (complete). Code that needs one of these paths asks here.

A *model setting* (`sft.init`, `ppo.reward_model`, `--ckpt`, ...) is a stage name of this run, a
model or stage directory, or `hf:DIR` (a local Hugging Face Llama checkpoint, imported once).
"""

from __future__ import annotations

from pathlib import Path

import torch

from picochat.core.checkpoint import TOKENIZER_FILE, load_model_dir, resolve_model_dir
from picochat.core.model import GPT
from picochat.core.tokenizer import Tokenizer
from picochat.hf import HF_PREFIX
from picochat.hf.importer import import_hf

STAGE_NAMES = ("world", "tokenizer", "pretrain", "sft", "label", "rm", "ppo", "dpo", "rounds")  # pipeline order
MODEL_STAGES = ("pretrain", "sft", "ppo", "dpo")  # the stages whose output is a chat or language model


def world_file(out: Path) -> Path:
    return Path(out) / "world" / "world.json"


def tokenizer_file(out: Path) -> Path:
    return Path(out) / "tokenizer" / "tokenizer.json"


def round_dir(out: Path, r: int) -> Path:
    """A later RLHF round's directory (r >= 2): label/, rm/ and ppo/ of that round."""
    return Path(out) / "rounds" / f"round_{r}"


def policy_of_round(out: Path, r: int) -> Path:
    """The RL policy round r ended with: the ppo stage's for round 1."""
    return Path(out) / "ppo" if r == 1 else round_dir(out, r) / "ppo"


def human_labels_dir(out: Path) -> Path:
    """Where people's rankings from the labeling page go: outside every stage's directory, so that
    redoing a stage never deletes them."""
    return Path(out) / "human_labels"


def human_labels_file(out: Path, r: int) -> Path:
    """People's rankings for RLHF round r (`picochat serve --label-out`)."""
    return human_labels_dir(out) / f"round_{r}.jsonl"


def answer_cache_dir(out: Path) -> Path:
    """Where a run keeps the answers its evaluations sampled (`picochat.eval.answer_cache`)."""
    return Path(out) / "cache" / "answers"


def stage_reference(value: str, default: str) -> str | None:
    """The stage of this run a model setting (`sft.init`, `ppo.reward_model`, ...) points at: its
    default when empty, the value when it is a stage name, None when it is a directory."""
    if not value:
        return default
    return value if value in STAGE_NAMES else None


def model_location(value: str, default: str, out: Path) -> Path | str:
    """Where a model setting's model lives: `<out>/<stage>` for a stage name (or the default), else
    the directory (or `hf:DIR`) it names."""
    stage = stage_reference(value, default)
    if stage:
        return Path(out) / stage
    return value if value.startswith(HF_PREFIX) else Path(value)


def resolve_model(path: str | Path) -> Path:
    """The model directory of a model setting: `hf:DIR` is imported (once, cached), a stage
    directory gives its final model or latest checkpoint."""
    if str(path).startswith(HF_PREFIX):
        return import_hf(str(path))
    return resolve_model_dir(path)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[GPT, dict]:
    """(model, meta) of a model setting; meta["model_dir"] is the directory it was read from."""
    return load_model_dir(resolve_model(path), device)


def load_model_and_tokenizer(path: str | Path, device: torch.device | str = "cpu") -> tuple[GPT, Tokenizer, dict]:
    """(model, the tokenizer it was trained with, meta) of a model setting."""
    model, meta = load_model(path, device)
    return model, model_tokenizer(meta), meta


def model_tokenizer(meta: dict) -> Tokenizer:
    """The tokenizer saved beside a loaded model (meta from `load_model`)."""
    return Tokenizer.load(Path(meta["model_dir"]) / TOKENIZER_FILE)
