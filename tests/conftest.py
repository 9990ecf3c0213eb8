"""Shared fixtures: one small world corpus, tokenizer and token shards for the whole session."""

from __future__ import annotations

import pytest
import torch

from picochat.data.shards import build_shards, load_shards
from picochat.world import WorldConfig, write_world

SMALL_WORLD = WorldConfig(seed=7, n_characters=12, n_places=6, corpus_mb=0.25)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(1)  # stable and fast for tiny models on a shared 2-core CI machine
    yield


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    write_world(out, SMALL_WORLD)
    return out


@pytest.fixture(scope="session")
def world_tokenizer(world_dir):
    from picochat.data.readers import iter_corpus
    from picochat.tokenizer import train_tokenizer

    return train_tokenizer(iter_corpus([world_dir / "corpus.jsonl"]), vocab_size=512, show_progress=False)


@pytest.fixture(scope="session")
def world_shards(world_dir, world_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    build_shards([world_dir / "corpus.jsonl"], world_tokenizer, out, val_fraction=0.1, show_progress=False)
    return load_shards(out)
