"""Shared fixtures: one small world corpus, tokenizer and token shards for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

# One thread everywhere, set before torch is imported: in this process (also while the session
# fixtures train, before any test's own fixture runs) and in every CLI subprocess a test starts.
# With one thread the trainer never switches thread counts by timing (a choice that depends on
# the machine's load and changes float rounding), so every figure the tests check is the same on a
# quiet and on a busy machine.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from benchmark_data import write_benchmark_data  # noqa: E402

from picochat.cli.main import main  # noqa: E402  (after the thread settings above)
from picochat.data.shards import build_shards, load_shards  # noqa: E402
from picochat.world import WorldConfig, write_world  # noqa: E402

SMALL_WORLD = WorldConfig(seed=7, n_characters=12, n_places=6, corpus_mb=0.25)


def kill_at_checkpoint(proc, state_file, key: str, at_least: int, timeout: float) -> None:
    """SIGKILL `proc` once the trainer state it checkpoints to `state_file` has `key` >= at_least
    (a kill in the middle of a stage, for the resume tests). Fails if it finished first."""
    import os
    import signal
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if torch.load(state_file, weights_only=True)[key] >= at_least:
                break
        except (FileNotFoundError, RuntimeError, EOFError):  # not written yet, or being swapped in
            pass
        time.sleep(0.02)
    assert proc.poll() is None, f"{proc.args[:4]} finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


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
    from picochat.core.tokenizer import train_tokenizer
    from picochat.data.readers import iter_corpus

    return train_tokenizer(iter_corpus([world_dir / "corpus.jsonl"]), vocab_size=512, show_progress=False)


@pytest.fixture(scope="session")
def world_shards(world_dir, world_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    build_shards([world_dir / "corpus.jsonl"], world_tokenizer, out, val_fraction=0.1, show_progress=False)
    return load_shards(out)


# The whole pipeline at a tiny size, run once per session through the CLI.
TINY = [
    "world.n_characters=10", "world.n_places=5", "world.corpus_mb=0.2",
    "tokenizer.vocab_size=400",
    "model.d_model=48", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "model.ffn_hidden=128",
    "model.max_seq_len=128", "pretrain.seq_len=64",
    "chat.n_train=300", "chat.n_test=60",
    "sft.train.max_steps=12", "sft.train.batch_size=8", "sft.train.eval_every=6", "sft.train.eval_batches=2",
    "sft.train.log_every=3", "sft.train.ckpt_every=6", "sft.eval_prompts=12", "sft.eval_samples=2",
    "sft.eval_max_new_tokens=24",
    "label.k=4", "label.n_prompts=24", "label.n_test_prompts=12", "label.max_new_tokens=24", "label.batch_prompts=8",
    "rm.train.max_steps=10", "rm.train.batch_size=4", "rm.train.eval_every=5", "rm.train.log_every=5",
    "rm.train.ckpt_every=5",
    "ppo.train.max_steps=3", "ppo.rollout_prompts=8", "ppo.minibatch_size=4", "ppo.max_new_tokens=16",
    "ppo.eval_prompts=8", "ppo.eval_samples=1", "ppo.eval_max_new_tokens=16", "ppo.train.ckpt_every=2",
    "dpo.train.max_steps=4", "dpo.train.batch_size=4", "dpo.train.eval_every=2", "dpo.train.log_every=2",
    "dpo.eval_prompts=8", "dpo.eval_samples=1", "dpo.eval_max_new_tokens=16",
    "pretrain.train.max_steps=30", "pretrain.train.batch_size=8", "pretrain.train.eval_every=15",
    "pretrain.train.eval_batches=2", "pretrain.train.log_every=5", "pretrain.train.ckpt_every=10",
    "pretrain.sample.max_new_tokens=12",
    # compiling costs 10-40 s per process; test_trainer.py tests the compiled path (resume included)
    "pretrain.train.compile=false",
    "report.eval_prompts=16", "report.max_new_tokens=16", "report.n_examples=4",
]


def tiny_without(*keys: str) -> list[str]:
    """TINY less some of its settings: those a run on one's own data does not read, which the
    config rejects (e.g. sft.eval_samples with sft.sources: no gold scorer to score samples with)."""
    return [item for item in TINY if item.partition("=")[0] not in keys]


def stage_outputs(run: Path) -> dict[str, bytes]:
    """The models and summaries of a run's stages: what tests read from the shared run."""
    stages = ("world", "tokenizer", "pretrain", "sft", "label", "rm", "ppo", "dpo")
    return {f"{stage}/{name}": (run / stage / name).read_bytes()
            for stage in stages for name in ("model.safetensors", "summary.json") if (run / stage / name).exists()}


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """The tiny pipeline, run once per session. Tests read it; a test that changes a stage works on
    a copy, or every test after it would read another model depending on the order tests run in
    (a reward-model test once failed on a fresh clone that way). Checked at the end of the session."""
    out = tmp_path_factory.mktemp("run")
    eval_data = write_benchmark_data(tmp_path_factory.mktemp("eval_data"))  # the report's benchmark card
    assert main(["run", "--out", str(out), "--no-progress", *TINY, f"eval.data_dir={eval_data}", "eval.limit=3"]) == 0
    before = stage_outputs(out)
    yield out
    changed = sorted(k for k in before.keys() | stage_outputs(out).keys()
                     if before.get(k) != stage_outputs(out).get(k))
    assert not changed, f"a test changed the shared run_dir's stages (work on a copy instead): {changed}"
