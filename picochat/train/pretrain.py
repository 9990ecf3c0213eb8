"""Pretraining: next-token prediction on token shards, with loss, perplexity and bits per byte."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from picochat.core import distributed
from picochat.core.checkpoint import write_model_dir
from picochat.config import PretrainConfig, RunConfig, SampleConfig
from picochat.data.shards import ShardMeta, build_shards, load_shards
from picochat.core.distributed import rank_share
from picochat.data.sources import resolve_sources
from picochat.core.generate import SamplingConfig, generate
from picochat.core.io import atomic_write_text
from picochat.core.model import GPT, ModelConfig, lm_loss
from picochat.core.tokenizer import Tokenizer
from picochat.core.precision import autocast, default_device
from picochat.train.trainer import Trainer


def random_windows(tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, step: int, micro: int,
                   rank: int = 0, world_size: int = 1) -> dict:
    """A batch of random (input, target) windows; a pure function of (seed, step, micro), so a
    resumed run sees exactly the batches the uninterrupted run would have seen. Under torchrun,
    process `rank` gets its `batch_size` windows of the global batch of batch_size × world_size."""
    n = len(tokens)
    if n < seq_len + 1:
        raise ValueError(f"only {n} training tokens; need at least seq_len+1 = {seq_len + 1}")
    rng = np.random.default_rng([seed, step, micro])
    starts = rank_share(rng.integers(0, n - seq_len, size=batch_size * world_size), batch_size, rank)
    rows = np.stack([np.asarray(tokens[s : s + seq_len + 1], dtype=np.int64) for s in starts])
    rows_t = torch.from_numpy(rows)  # (B, T+1)
    return {"input_ids": rows_t[:, :-1], "targets": rows_t[:, 1:]}


def fixed_windows(tokens: np.ndarray, seq_len: int, n_windows: int) -> torch.Tensor:
    """Evenly spaced windows over the validation tokens: the same ones at every evaluation."""
    seq_len = min(seq_len, len(tokens) - 1)
    last_start = len(tokens) - seq_len - 1
    starts = np.linspace(0, last_start, num=n_windows).astype(np.int64)
    rows = np.stack([np.asarray(tokens[s : s + seq_len + 1], dtype=np.int64) for s in starts])
    return torch.from_numpy(rows)  # (N, T+1)


def bits_per_byte(loss_nats_per_token: float, n_tokens: int, n_bytes: int) -> float:
    """Tokenizer-independent loss: nats/token × tokens/byte ÷ ln 2."""
    return loss_nats_per_token * (n_tokens / max(1, n_bytes)) / math.log(2)


def make_evaluator(val: np.ndarray, meta: ShardMeta, seq_len: int, batch_size: int, n_batches: int,
                   rank: int = 0, world_size: int = 1):
    """Validation loss on n_batches × batch_size fixed windows per process: under torchrun each
    process takes its share of n_batches × batch_size × world_size windows and the sums are
    all-reduced, so N processes with batch b evaluate what one process with batch N·b does."""
    windows = rank_share(fixed_windows(val, seq_len, n_batches * batch_size * world_size), n_batches * batch_size, rank)

    def evaluate(model: torch.nn.Module) -> dict:
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for chunk in windows.split(batch_size):
            chunk = chunk.to(device)
            logits = model(chunk[:, :-1])
            total += lm_loss(logits, chunk[:, 1:]).item() * chunk[:, 1:].numel()
            count += chunk[:, 1:].numel()
        if world_size > 1:
            total, count = distributed.sum_over_ranks([total, count])
        loss = total / count
        return {
            "val_loss": loss,
            "val_ppl": math.exp(min(loss, 50.0)),
            "val_bpb": bits_per_byte(loss, meta.n_val_tokens, meta.n_val_bytes),
        }

    return evaluate


def pretrain_model_config(cfg: RunConfig, tokenizer: Tokenizer) -> ModelConfig:
    """The preset's architecture with the vocabulary of the trained tokenizer (rounded up to a
    multiple of 64, which keeps the embedding matmuls on fast kernel sizes)."""
    d = cfg.model.to_dict()
    d["vocab_size"] = int(math.ceil(tokenizer.vocab_size / 64) * 64)
    if cfg.pretrain.seq_len > d["max_seq_len"]:
        raise ValueError(
            f"pretrain.seq_len={cfg.pretrain.seq_len} exceeds model.max_seq_len={d['max_seq_len']}"
        )
    return ModelConfig.from_dict(d)


def sample_texts(model: GPT, tokenizer: Tokenizer, prompts: list[str], scfg: SampleConfig, precision: str) -> list[str]:
    """Continue each prompt; documents start after <|endoftext|> in the shards, so prompts do too."""
    device = next(model.parameters()).device
    ids = [[tokenizer.eot_id] + tokenizer.encode(p) for p in prompts]
    sampling = SamplingConfig(
        max_new_tokens=scfg.max_new_tokens,
        temperature=scfg.temperature,
        top_k=scfg.top_k or None,
        top_p=scfg.top_p if 0 < scfg.top_p < 1 else None,
        seed=scfg.seed,
        stop_ids=(tokenizer.eot_id,),
    )
    model.eval()
    with autocast(precision, device):
        results = generate(model, ids, sampling, pad_id=tokenizer.pad_id)
    return [p + tokenizer.decode(r.tokens) for p, r in zip(prompts, results)]


def default_prompts(cfg: RunConfig, out: Path) -> list[str]:
    """Prompts for the samples: the configured ones, else a few openings about the world."""
    if cfg.pretrain.sample.prompts:
        return list(cfg.pretrain.sample.prompts)
    world_file = out / "world" / "world.json"
    if cfg.pretrain.sources or not world_file.exists():
        return ["The", "Once upon a time"]
    from picochat.world import read_world

    world, _ = read_world(world_file)
    a, b = world.characters[0], world.characters[1]
    return [f"{a.name} is", f"{b.name} lives in", f"{a.name_zh}是", "23 + 45 ="]


def run_pretrain(cfg: RunConfig, out: Path, show_progress: bool = True) -> dict:
    out = Path(out)
    stage_dir = out / "pretrain"
    pcfg: PretrainConfig = cfg.pretrain
    tokenizer_file = out / "tokenizer" / "tokenizer.json"
    if not tokenizer_file.exists():
        raise FileNotFoundError(f"{tokenizer_file} not found: run `picochat tokenizer --out {out}` first")
    tokenizer = Tokenizer.load(tokenizer_file)
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
        f"{model.flops_per_token(pcfg.seq_len) / 1e6:.1f} MFLOPs/token (training), {meta.n_train_tokens:,} train tokens, "
        f"{meta.n_val_tokens:,} val tokens, {tcfg.max_steps} steps x {tcfg.batch_size * tcfg.grad_accum_steps * world} x "
        f"{pcfg.seq_len} tokens"
        + (f" ({world} processes, {tcfg.parallel})" if world > 1 else "")
    )
    trainer = Trainer(
        model,
        tcfg,
        stage_dir,
        get_batch=lambda step, micro: random_windows(train_tokens, pcfg.seq_len, tcfg.batch_size, tcfg.seed, step, micro,
                                                     rank, world),
        loss_fn=lambda m, b: lm_loss(m(b["input_ids"]), b["targets"]),
        evaluate=make_evaluator(val_tokens, meta, pcfg.seq_len, tcfg.batch_size, tcfg.eval_batches, rank, world),
        tokenizer_file=tokenizer_file,
        device=device,
        stage="pretrain",
        show_progress=show_progress,
    )
    result, model = trainer.fit_to_end()
    if model is None:  # under torchrun, rank 0 alone writes the model, samples and summary
        return {}
    write_model_dir(stage_dir, model, tokenizer_file, {"stage": "pretrain", "step": result.step})
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
