"""A stage command never loses finished work: a mistyped source, a malformed line or a bad value
leaves the run directory as it was; a stage that is redone replaces the old one only once it is
complete; a checkpoint write killed halfway leaves no orphan behind."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from conftest import TINY

from picochat.cli.main import main
from picochat.run.registry import STAGES

SFT_ARGS = ["init=" + "{pretrain}", "max_examples=40", "val_fraction=0.2", "train.max_steps=4", "train.batch_size=4",
            "train.eval_every=2", "train.eval_batches=2", "train.log_every=2", "train.ckpt_every=2", "seq_len=64",
            "eval_prompts=0"]


def _chats(path: Path, n: int, broken_line: int | None = None) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            if i + 1 == broken_line:
                f.write('{"messages": [{"role": "user", "content": "hi"}\n')  # cut off mid-record
                continue
            f.write(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus one?"},
                                             {"role": "assistant", "content": f"It is {i + 1}."}]}) + "\n")
    return path


def _tree(root: Path) -> dict[str, str]:
    """Every file under root (relative path -> content hash): the run directory's exact state."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def finished_sft(run_dir, tmp_path):
    """A run directory whose SFT stage (own data, with checkpoints) is finished."""
    good = _chats(tmp_path / "good.jsonl", 40)
    out = tmp_path / "run"
    args = [a.format(pretrain=run_dir / "pretrain") for a in SFT_ARGS]
    assert main(["sft", "--out", str(out), "--no-progress", *TINY, f"sources={good}", *args]) == 0
    assert (out / "sft" / "model.safetensors").exists() and (out / "sft" / "checkpoint").exists()
    return out, args, good


def test_mistyped_source_changes_nothing(finished_sft, capsys):
    out, args, good = finished_sft
    before = _tree(out)
    typo = good.with_name("goood.jsonl")
    assert main(["sft", "--out", str(out), "--no-progress", *TINY, f"sources={typo}", *args]) == 2
    err = capsys.readouterr().err
    assert "goood.jsonl" in err and "sft.sources" in err
    assert _tree(out) == before  # model, checkpoints and config.yaml untouched


def test_malformed_source_line_restores_the_finished_stage(finished_sft, tmp_path, capsys):
    out, args, _ = finished_sft
    before = _tree(out)
    bad = _chats(tmp_path / "bad.jsonl", 40, broken_line=7)
    assert main(["sft", "--out", str(out), "--no-progress", *TINY, f"sources={bad}", *args]) == 2
    captured = capsys.readouterr()
    assert "bad.jsonl" in captured.err and "line 7" in captured.err
    assert "nothing was changed" in captured.err
    assert _tree(out) == before  # the old stage is back and config.yaml does not hold the bad source
    assert not (out / "sft.previous").exists()
    assert str(bad) not in (out / "config.yaml").read_text()


def test_redone_stage_replaces_the_old_one_only_when_complete(finished_sft, tmp_path, capsys, monkeypatch):
    out, args, good = finished_sft
    old_model = (out / "sft" / "model.safetensors").read_bytes()
    seen_during_run = {}
    real_run_sft = STAGES["sft"].run

    def spying_run_sft(cfg, run_out, show_progress):
        seen_during_run["previous"] = (run_out / "sft.previous" / "model.safetensors").read_bytes()
        return real_run_sft(cfg, run_out, show_progress)

    monkeypatch.setitem(STAGES, "sft", dataclasses.replace(STAGES["sft"], run=spying_run_sft))
    assert main(["sft", "--out", str(out), "--no-progress", *TINY, f"sources={good}", *args, "train.seed=2"]) == 0
    assert "kept in" in capsys.readouterr().out
    assert seen_during_run["previous"] == old_model  # set aside, not deleted, while the new one ran
    assert not (out / "sft.previous").exists()  # and deleted once the new one completed
    assert (out / "sft" / "model.safetensors").read_bytes() != old_model


def test_interrupted_redo_keeps_its_checkpoint_and_the_previous_stage(finished_sft, capsys, monkeypatch):
    """Work the new attempt saved is not thrown away either: both stay, and a rerun resumes."""
    out, args, good = finished_sft
    real_run_sft = STAGES["sft"].run

    def run_then_crash(cfg, run_out, show_progress):
        real_run_sft(cfg, run_out, show_progress)  # writes checkpoints, then the process "dies"
        raise RuntimeError("simulated crash after a checkpoint")

    monkeypatch.setitem(STAGES, "sft", dataclasses.replace(STAGES["sft"], run=run_then_crash))
    assert main(["sft", "--out", str(out), "--no-progress", *TINY, f"sources={good}", *args, "train.seed=2"]) == 2
    assert "kept to resume" in capsys.readouterr().err
    assert (out / "sft" / "checkpoint").exists() and (out / "sft.previous" / "model.safetensors").exists()
    monkeypatch.setitem(STAGES, "sft", dataclasses.replace(STAGES["sft"], run=real_run_sft))
    assert main(["sft", "--out", str(out), "--no-progress", *TINY, f"sources={good}", *args, "train.seed=2"]) == 0
    assert not (out / "sft.previous").exists() and (out / "sft" / "summary.json").exists()


@pytest.mark.parametrize("value", ["-1", "2", "0"])
def test_out_of_range_val_fraction_is_refused_and_not_saved(tmp_path, capsys, value):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--stages", "world", "--no-progress", *TINY]) == 0
    config_before = (out / "config.yaml").read_text()
    assert main(["pretrain", "--out", str(out), "--no-progress", f"val_fraction={value}"]) == 2
    assert "pretrain.val_fraction" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == config_before


def test_orphan_checkpoint_temp_dir_is_cleaned_up(tmp_path):
    """A kill during a checkpoint write leaves `.checkpoint.XXXX/`; the next write removes it."""
    import torch

    from picochat.core.checkpoint import save_checkpoint
    from picochat.core.model import GPT, ModelConfig
    from picochat.core.tokenizer import train_tokenizer

    tok = train_tokenizer(["hello world"] * 20, vocab_size=300, show_progress=False)
    tok.save(tmp_path / "tok")
    stage = tmp_path / "stage"
    orphan = stage / ".checkpoint.abc123"
    orphan.mkdir(parents=True)
    (orphan / "model.safetensors").write_bytes(b"half written")
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                            ffn_hidden=32, max_seq_len=16))
    save_checkpoint(stage, model, tmp_path / "tok" / "tokenizer.json", {"step": 1, "rng": torch.get_rng_state()})
    assert not orphan.exists()
    assert [p.name for p in stage.iterdir()] == ["checkpoint"]
