"""Model directories and resumable checkpoints.

A *model directory* holds what any later stage or tool needs to use a model:
  model.safetensors   the weights (safetensors, tied weights stored once)
  config.json         {"model": ModelConfig, "stage": ..., "step": ...}
  tokenizer.json      the tokenizer the model was trained with
A *checkpoint* is a model directory plus `trainer_state.pt` (optimizer, step, RNG, loss window),
and the model directories of any other trained models in subdirectories (PPO's `value/`), written
as a whole into a temp directory and swapped in, so a run killed mid-save still has the previous
complete checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from picochat.core.io import (
    atomic_write,
    atomic_write_json,
    make_temp_dir,
    resolve_swapped_directory,
    swap_in_directory,
)
from picochat.core.model import GPT, ModelConfig

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
STATE_FILE = "trainer_state.pt"
CHECKPOINT_DIR = "checkpoint"


def write_model_dir(out_dir: Path, model: GPT, tokenizer_file: Path, meta: dict | None = None) -> None:
    """Write weights, config and tokenizer into `out_dir`, each file atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    atomic_write(out_dir / MODEL_FILE, lambda p: save_model(raw, str(p)))
    atomic_write_json(out_dir / CONFIG_FILE, {"model": raw.cfg.to_dict(), **(meta or {})})
    if Path(tokenizer_file).resolve() != (out_dir / TOKENIZER_FILE).resolve():
        atomic_write(out_dir / TOKENIZER_FILE, lambda p: shutil.copyfile(tokenizer_file, p))


def resolve_model_dir(path: str | Path) -> Path:
    """Accept a model directory, or a stage directory whose final model or latest checkpoint is
    inside; raise FileNotFoundError with a clear message otherwise. (`hf:DIR` is resolved one
    layer up, by `picochat.layout.resolve_model`.)"""
    path = Path(path)
    if (path / MODEL_FILE).exists():
        return path
    ckpt = resolve_swapped_directory(path / CHECKPOINT_DIR)
    if ckpt is not None and (ckpt / MODEL_FILE).exists():
        return ckpt
    raise FileNotFoundError(
        f"no model found in {path}: expected {MODEL_FILE} there or in {path / CHECKPOINT_DIR}/ "
        "(train one with `picochat pretrain`, pass the directory of a finished stage, or hf:DIR for a "
        "Hugging Face checkpoint)"
    )


def read_model_config(model_dir: Path) -> tuple[ModelConfig, dict]:
    meta = json.loads((Path(model_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
    return ModelConfig.from_dict(meta["model"]), meta


def load_model_dir(path: str | Path, device: torch.device | str = "cpu") -> tuple[GPT, dict]:
    """Load a model (weights + config) from a model or stage directory. Returns (model, meta)."""
    model_dir = resolve_model_dir(path)
    cfg, meta = read_model_config(model_dir)
    model = GPT(cfg)
    load_weights(model, model_dir)
    meta["model_dir"] = str(model_dir)
    return model.to(device), meta


def save_checkpoint(
    stage_dir: Path, model: GPT, tokenizer_file: Path, state: dict[str, Any], meta: dict | None = None,
    extra_models: dict[str, tuple[GPT, dict]] | None = None,
) -> Path:
    """Write `stage_dir/checkpoint/` (model dir + trainer state) as one atomic swap.

    `extra_models` maps a subdirectory name to (model, meta) for other models trained alongside
    (PPO's value model in `value/`); each becomes a model directory of its own in the checkpoint."""
    stage_dir = Path(stage_dir)
    tmp = make_temp_dir(stage_dir, CHECKPOINT_DIR)
    try:
        write_model_dir(tmp, model, tokenizer_file, {**(meta or {}), "step": state["step"]})
        for name, (extra, extra_meta) in (extra_models or {}).items():
            write_model_dir(tmp / name, extra, tokenizer_file, extra_meta)
        torch.save(state, tmp / STATE_FILE)
        swap_in_directory(tmp, stage_dir / CHECKPOINT_DIR)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stage_dir / CHECKPOINT_DIR


def load_weights(model: GPT, model_dir: Path) -> None:
    """Load the weights of a model directory (or a checkpoint, or one of its extra models) into
    `model`, which must have exactly their shapes."""
    load_model(model, str(Path(model_dir) / MODEL_FILE), strict=True)


def load_checkpoint_state(stage_dir: Path) -> tuple[Path, dict] | None:
    """(checkpoint dir, trainer state) of the latest complete checkpoint, or None."""
    ckpt = resolve_swapped_directory(Path(stage_dir) / CHECKPOINT_DIR)
    if ckpt is None or not (ckpt / STATE_FILE).exists():
        return None
    state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    return ckpt, state
