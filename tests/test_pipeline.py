"""The pipeline end to end through the CLI, at a tiny size: world → tokenizer → pretrain → sample."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from picochat.cli import main

TINY = [
    "world.n_characters=10", "world.n_places=5", "world.corpus_mb=0.2",
    "tokenizer.vocab_size=400",
    "model.d_model=48", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "model.ffn_hidden=128",
    "model.max_seq_len=64", "pretrain.seq_len=64",
    "pretrain.train.max_steps=30", "pretrain.train.batch_size=8", "pretrain.train.eval_every=15",
    "pretrain.train.eval_batches=2", "pretrain.train.log_every=5", "pretrain.train.ckpt_every=10",
    "pretrain.sample.max_new_tokens=12",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["run", "--out", str(out), "--no-progress", *TINY]) == 0
    return out


def test_run_writes_every_stage_with_summaries(run_dir):
    for stage in ("world", "tokenizer", "pretrain"):
        summary = json.loads((run_dir / stage / "summary.json").read_text())
        assert summary["stage"] == stage
    pre = json.loads((run_dir / "pretrain" / "summary.json").read_text())
    assert pre["steps"] == 30 and pre["val_loss"] < 6.0 and pre["val_bpb"] > 0
    assert pre["tokens"] == 30 * 8 * 64
    assert len(pre["samples"]) == 4
    assert (run_dir / "config.yaml").exists()
    assert (run_dir / "pretrain" / "model.safetensors").exists()
    assert (run_dir / "pretrain" / "samples.md").read_text().startswith("# Pretrained model samples")
    lines = (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [5, 10, 15, 20, 25, 30]


def test_rerun_reuses_complete_stages_and_redoes_changed_ones(run_dir, capsys):
    assert main(["run", "--out", str(run_dir), "--no-progress", *TINY]) == 0
    out = capsys.readouterr().out
    assert out.count("up to date") == 3
    # A pretraining change redoes pretraining only.
    assert main(["pretrain", "--out", str(run_dir), "--no-progress", *TINY, "train.max_steps=10"]) == 0
    out = capsys.readouterr().out
    assert "starting this stage over" in out
    assert json.loads((run_dir / "pretrain" / "summary.json").read_text())["steps"] == 10


def test_sample_command_continues_a_prompt(run_dir, capsys):
    assert main(["sample", "--ckpt", str(run_dir / "pretrain"), "--prompt", "The", "--prompt", "米",
                 "--max-new-tokens", "8", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "--- sample 1 ---\nThe" in out and "--- sample 2 ---\n米" in out


def test_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["pretrain", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "needs stage 'tokenizer' first" in err
    assert main(["run", "--out", str(tmp_path), "train.lr"]) == 2
    assert "not of the form key=value" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken}\n', encoding="utf-8")
    assert main(["tokenizer", "--out", str(tmp_path / "r"), f"sources={bad}", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "line 2" in err


def test_console_script_help_explains_commands():
    out = subprocess.run([sys.executable, "-m", "picochat", "--help"], capture_output=True, text=True, check=True).stdout
    for word in ("run", "world", "tokenizer", "pretrain", "sample", "key=value"):
        assert word in out
