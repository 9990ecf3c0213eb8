"""The pretrain stage: build token shards of the corpus, train the GPT from scratch on next-token
prediction, and report loss, perplexity and bits per byte (see picochat.train.pretrain for the
pieces it uses)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from picochat.config import ConfigError, PretrainConfig, RunConfig
from picochat.core import distributed
from picochat.core.checkpoint import write_model_dir
from picochat.core.io import atomic_write_text
from picochat.core.model import GPT, ModelConfig, lm_loss
from picochat.core.precision import default_device
from picochat.core.tokenizer import Tokenizer
from picochat.data.shards import build_shards, load_shards
from picochat.data.sources import resolve_sources
from picochat.layout import tokenizer_file, world_file
from picochat.train.pretrain import make_evaluator, random_windows, sample_texts
from picochat.train.trainer import Trainer
from picochat.world import read_world


def pretrain_model_config(cfg: RunConfig, tokenizer: Tokenizer) -> ModelConfig:
    """The preset's architecture with the vocabulary of the trained tokenizer (rounded up to a
    multiple of 64, which keeps the embedding matmuls on fast kernel sizes).

    model.vocab_size is not a free setting: left at its default it is replaced (and a line says
    so), and any other value must equal the tokenizer's, or the run stops here."""
    d = cfg.model.to_dict()
    vocab_size = int(math.ceil(tokenizer.vocab_size / 64) * 64)
    if d["vocab_size"] != vocab_size:
        if d["vocab_size"] != ModelConfig().vocab_size:
            raise ConfigError(
                f"model.vocab_size={d['vocab_size']} disagrees with the tokenizer: the model's vocabulary is the "
                f"tokenizer's {tokenizer.vocab_size:,} tokens, rounded up to {vocab_size:,} embedding rows. Set "
                "tokenizer.vocab_size to change it, and remove model.vocab_size")
        print(f"[pretrain] model.vocab_size {d['vocab_size']:,} replaced by {vocab_size:,}: the tokenizer's "
              f"{tokenizer.vocab_size:,} tokens, rounded up to a multiple of 64")
    d["vocab_size"] = vocab_size
    if cfg.pretrain.seq_len > d["max_seq_len"]:
        raise ValueError(
            f"pretrain.seq_len={cfg.pretrain.seq_len} exceeds model.max_seq_len={d['max_seq_len']}"
        )
    return ModelConfig.from_dict(d)


def default_prompts(cfg: RunConfig, out: Path) -> list[str]:
    """Prompts for the samples: the configured ones, else a few openings about the world."""
    if cfg.pretrain.sample.prompts:
        return list(cfg.pretrain.sample.prompts)
    if cfg.pretrain.sources or not world_file(out).exists():
        return ["The", "Once upon a time"]

    world, _ = read_world(world_file(out))
    a, b = world.characters[0], world.characters[1]
    return [f"{a.name} is", f"{b.name} lives in", f"{a.name_zh}是", "23 + 45 ="]


def run(cfg: RunConfig, out: Path, show_progress: bool = True) -> dict:
    out = Path(out)
    stage_dir = out / "pretrain"
    pcfg: PretrainConfig = cfg.pretrain
    tokenizer_path = tokenizer_file(out)
    if not tokenizer_path.exists():
        raise FileNotFoundError(f"{tokenizer_path} not found: run `picochat tokenizer --out {out}` first")
    tokenizer = Tokenizer.load(tokenizer_path)
    sources = resolve_sources(pcfg.sources, "pretrain.sources") or [out / "world" / "corpus.jsonl"]
    t0 = time.perf_counter()
    with distributed.main_process_first():  # rank 0 tokenizes; the others then find the shards built
        build_shards(sources, tokenizer, stage_dir / "data", val_fraction=pcfg.val_fraction,
                     text_field=pcfg.text_field, show_progress=show_progress and distributed.is_main())
    train_tokens, val_tokens, meta = load_shards(stage_dir / "data")
    device = default_device()
    mcfg = pretrain_model_config(cfg, tokenizer)
    torch.manual_seed(pcfg.train.seed)
    model = GPT(mcfg)
    tcfg = pcfg.train
    rank, world = distributed.rank(), distributed.world_size()
    print(
        f"[pretrain] {model.num_params() / 1e6:.2f}M parameters, "
        f"{model.flops_per_token(pcfg.seq_len) / 1e6:.1f} MFLOPs/token (training), "
        f"{meta.n_train_tokens:,} train tokens, {meta.n_val_tokens:,} val tokens, "
        f"{tcfg.max_steps} steps x {tcfg.batch_size * tcfg.grad_accum_steps * world} x "
        f"{pcfg.seq_len} tokens"
        + (f" ({world} processes, {tcfg.parallel})" if world > 1 else "")
    )
    trainer = Trainer(
        model,
        tcfg,
        stage_dir,
        get_batch=lambda step, micro: random_windows(train_tokens, pcfg.seq_len, tcfg.batch_size, tcfg.seed, step,
                                                     micro, rank, world),
        loss_fn=lambda m, b: lm_loss(m(b["input_ids"]), b["targets"]),
        evaluate=make_evaluator(val_tokens, meta, pcfg.seq_len, tcfg.batch_size, tcfg.eval_batches, rank, world),
        tokenizer_file=tokenizer_path,
        device=device,
        stage="pretrain",
        show_progress=show_progress,
    )
    result, model = trainer.fit_to_end()
    if model is None:  # under torchrun, rank 0 alone writes the model, samples and summary
        return {}
    write_model_dir(stage_dir, model, tokenizer_path, {"stage": "pretrain", "step": result.step})
    prompts = default_prompts(cfg, out)
    samples = sample_texts(model, tokenizer, prompts, pcfg.sample, trainer.precision)
    atomic_write_text(stage_dir / "samples.md", "# Pretrained model samples\n\n" + "".join(
        f"## Prompt: `{p}`\n\n```\n{s}\n```\n\n" for p, s in zip(prompts, samples)))
    summary = {
        "stage": "pretrain",
        "params": model.num_params(),
        "params_non_embedding": model.num_params(exclude_embeddings=True),
        "flops_per_token": model.flops_per_token(pcfg.seq_len),
        **result.figures(),
        "train_tokens_in_corpus": meta.n_train_tokens,
        "epochs": result.tokens / max(1, meta.n_train_tokens),
        **result.eval_metrics,
        "wall_s": time.perf_counter() - t0,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "samples": samples,
    }
    return summary
