"""The tokenizer stage: train the byte-level BPE tokenizer on the corpus and measure its compression."""

from __future__ import annotations

import time
from pathlib import Path

from picochat.config import RunConfig
from picochat.core.tokenizer import train_tokenizer
from picochat.data.readers import iter_corpus
from picochat.data.sources import resolve_sources


def tokenizer_corpus(cfg: RunConfig) -> tuple[list[str], str, str]:
    """(sources, text field, setting name) the tokenizer learns from: its own sources, else the
    pretraining corpus, else (empty sources) the built-in world corpus."""
    if cfg.tokenizer.sources:
        return list(cfg.tokenizer.sources), cfg.tokenizer.text_field, "tokenizer.sources"
    return list(cfg.pretrain.sources), cfg.pretrain.text_field, "pretrain.sources"


def _tokenizer_sources(cfg: RunConfig, out: Path) -> tuple[list[Path], str]:
    specs, text_field, key = tokenizer_corpus(cfg)
    return (resolve_sources(specs, key) if specs else [out / "world" / "corpus.jsonl"]), text_field


def _tokenizer_training_texts(cfg: RunConfig, out: Path):
    sources, text_field = _tokenizer_sources(cfg, out)
    for i, text in enumerate(iter_corpus(sources, text_field)):
        if cfg.tokenizer.max_docs and i >= cfg.tokenizer.max_docs:
            break
        yield text
    # The chat roles appear right after <|im_start|> in every chat turn (SFT and later); train on
    # them so each role is one token instead of a few byte pieces.
    for _ in range(64):
        yield from ("system", "user", "assistant")


def run(cfg: RunConfig, out: Path, show_progress: bool) -> dict:
    t0 = time.perf_counter()
    tok = train_tokenizer(
        _tokenizer_training_texts(cfg, out), cfg.tokenizer.vocab_size,
        min_frequency=cfg.tokenizer.min_frequency, show_progress=show_progress,
    )
    tok.save(out / "tokenizer")
    # Compression on the first documents: how many UTF-8 bytes one token carries.
    sources, text_field = _tokenizer_sources(cfg, out)
    n_bytes = n_tokens = 0
    for i, text in enumerate(iter_corpus(sources, text_field)):
        if i >= 2000:
            break
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(tok.encode(text))
    return {
        "stage": "tokenizer",
        "vocab_size": tok.vocab_size,
        "vocab_size_requested": cfg.tokenizer.vocab_size,
        "bytes_per_token": n_bytes / max(1, n_tokens),
        "wall_s": time.perf_counter() - t0,
    }
