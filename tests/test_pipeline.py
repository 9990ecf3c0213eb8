"""The pipeline end to end through the CLI, at a tiny size: world → tokenizer → pretrain → sample."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import TINY, kill_at_checkpoint, tiny_without

from picochat.cli.main import main


def test_run_writes_every_stage_with_summaries(run_dir):
    for stage in ("world", "tokenizer", "pretrain", "sft", "label", "rm", "ppo", "dpo"):
        summary = json.loads((run_dir / stage / "summary.json").read_text())
        assert summary["stage"] == stage
    pre = json.loads((run_dir / "pretrain" / "summary.json").read_text())
    assert pre["steps"] == 30 and pre["val_loss"] < 6.0 and pre["val_bpb"] > 0
    assert pre["tokens"] == 30 * 8 * 64
    assert len(pre["samples"]) == 4
    assert (run_dir / "config.yaml").exists()
    assert (run_dir / "pretrain" / "model.safetensors").exists()
    assert (run_dir / "pretrain" / "samples.md").read_text().startswith("# Pretrained model samples")
    sft = json.loads((run_dir / "sft" / "summary.json").read_text())
    assert sft["steps"] == 12 and sft["n_train_conversations"] > 250
    for key in ("gold_score", "gold_score_sampled", "gold_score_best_of_2", "gold_score_pretrained"):
        assert 0.0 <= sft[key] <= 1.0
    assert set(sft["gold"]["greedy_by_lang"]) == {"en", "zh"}
    assert (run_dir / "sft" / "tokenizer_config.json").exists()
    label = json.loads((run_dir / "label" / "summary.json").read_text())
    assert label["n_prompts"] == 24 and label["k"] == 4 and label["test"]["n_prompts"] == 12
    lines = (run_dir / "label" / "preferences.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 24 and all(len(json.loads(x)["responses"]) == 4 for x in lines)
    rm = json.loads((run_dir / "rm" / "summary.json").read_text())
    assert rm["steps"] == 10 and rm["loss"] == "pairwise"
    assert 0 <= rm["pair_accuracy"] <= 1 and 0 <= rm["gold_pair_accuracy"] <= 1
    assert rm["calibration"] and abs(rm["normalization"]["gain"]) > 0
    for stage in ("ppo", "dpo"):
        summary = json.loads((run_dir / stage / "summary.json").read_text())
        for key in ("gold_score", "gold_score_sampled", "gold_score_sft", "kl"):
            assert isinstance(summary[key], float), (stage, key)
        assert (run_dir / stage / "model.safetensors").exists()
    ppo_log = [json.loads(x) for x in (run_dir / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in ppo_log] == [1, 2, 3]
    for key in ("rm_score", "gold_score", "kl", "kl_coef", "entropy", "response_length", "eos_rate", "approx_kl",
                "clipfrac", "ratio_mean", "ratio_var", "rollout_tokens_per_s", "train_tokens_per_s"):
        assert key in ppo_log[-1], key
    assert "value_loss" not in ppo_log[-1]  # the tiny preset's best-of-4 has no value model (tests/test_ppo.py has)
    lines = (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [5, 10, 15, 20, 25, 30]


def test_rerun_reuses_complete_stages_and_redoes_changed_ones(run_dir, tmp_path, capsys):
    import shutil
    import time

    t0 = time.perf_counter()
    assert main(["run", "--out", str(run_dir), "--no-progress", *TINY]) == 0
    seconds = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert out.count("up to date") == 8
    assert "reusing the comparison" in out and "[report] wrote" in out  # the report is rewritten, no model runs
    assert "[run] plan" not in out  # nothing to estimate: nothing runs
    assert seconds < 60, seconds  # measured ≈5 s (mostly drawing the plots); generous for a loaded machine
    # A pretraining change redoes pretraining only (in a copy: the session's run is shared by other tests).
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("checkpoint", "checkpoint.old"))
    assert main(["pretrain", "--out", str(run), "--no-progress", *TINY, "train.max_steps=10"]) == 0
    out = capsys.readouterr().out
    assert "starting this stage over" in out
    assert json.loads((run / "pretrain" / "summary.json").read_text())["steps"] == 10
    # ... and SFT, which started from the old pretrained model, is now out of date.
    from picochat.config import build_config
    from picochat.run.registry import stage_status

    cfg = build_config(preset=None, base_file=run / "config.yaml")
    assert stage_status("pretrain", cfg, run) == "done"
    assert stage_status("sft", cfg, run) == "stale"


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
    out = subprocess.run([sys.executable, "-m", "picochat", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for word in ("run", "world", "tokenizer", "pretrain", "sft", "chat", "sample", "key=value"):
        assert word in out


def test_hard_kill_then_rerun_reproduces_the_uninterrupted_run(tmp_path):
    """SIGKILL (no chance to save) mid-run: the rerun resumes from the last periodic checkpoint
    and its log matches an uninterrupted run exactly."""
    import shutil

    args = [*TINY, "pretrain.train.max_steps=60", "pretrain.train.ckpt_every=5", "pretrain.train.eval_every=0",
            "pretrain.train.threads=1"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert main(["run", "--out", str(clean), "--no-progress", "--stages", "world,tokenizer", *args]) == 0
    shutil.copytree(clean, killed)
    assert main(["pretrain", "--out", str(clean), "--no-progress", *args]) == 0

    proc = subprocess.Popen([sys.executable, "-m", "picochat", "pretrain", "--out", str(killed), "--no-progress",
                             *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_at_checkpoint(proc, killed / "pretrain" / "checkpoint" / "trainer_state.pt", "step", 10, timeout=120)
    assert not (killed / "pretrain" / "summary.json").exists()

    assert main(["pretrain", "--out", str(killed), "--no-progress", *args]) == 0
    def losses(run):
        lines = (run / "pretrain" / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"]) for r in map(json.loads, lines)]
    assert losses(killed) == losses(clean)
    a = json.loads((clean / "pretrain" / "summary.json").read_text())
    b = json.loads((killed / "pretrain" / "summary.json").read_text())
    assert a["val_loss"] == b["val_loss"] and a["samples"] == b["samples"]


def test_sft_on_a_public_instruction_set_through_the_same_reader(run_dir, tmp_path):
    from pathlib import Path

    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "sft_en" / "llamafactory_alpaca_en_demo.jsonl.gz"
    if not data.exists():
        pytest.skip(f"{data} not present")
    out = tmp_path / "alpaca"
    args = [f"init={run_dir / 'pretrain'}", f"sources={data}", "max_examples=60", "val_fraction=0.2",
            "train.max_steps=4", "train.batch_size=4", "train.eval_every=2", "train.eval_batches=2",
            "train.log_every=1", "seq_len=96"]
    assert main(["sft", "--out", str(out), "--no-progress", *tiny_without("sft.eval_samples"), *args]) == 0
    summary = json.loads((out / "sft" / "summary.json").read_text())
    assert summary["n_conversations_read"] == 60
    assert summary["n_train_conversations"] + summary["n_val_conversations"] + summary["n_dropped"] == 60
    assert summary["n_train_conversations"] > 30
    assert summary["val_loss"] > 0 and "gold_score" not in summary  # no world, no gold scorer
    assert (out / "sft" / "model.safetensors").exists()


def test_score_command_ranks_answers_with_the_reward_model(run_dir, tmp_path, capsys):
    assert main(["score", "--ckpt", str(run_dir / "rm"), "--prompt", "What is 2 + 3?",
                 "--response", "2 + 3 = 5.", "--response", "No."]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(float(x.split()[0]) == float(x.split()[0]) for x in lines)
    f = tmp_path / "answers.jsonl"
    f.write_text('{"prompt": "Hi", "response": "Hello!"}\n{"prompt": "Hi", "chosen": "a", "rejected": "b"}\n',
                 encoding="utf-8")
    assert main(["score", "--ckpt", str(run_dir / "rm"), "--file", str(f)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [len(r["scores"]) for r in rows] == [1, 2]
    f.write_text('{"prompt": "Hi", "response": "Hello!"}\n{"prompt": broken\n', encoding="utf-8")
    assert main(["score", "--ckpt", str(run_dir / "rm"), "--file", str(f)]) == 2
    assert "answers.jsonl, line 2" in capsys.readouterr().err
    assert main(["score", "--ckpt", str(run_dir / "sft"), "--prompt", "x", "--response", "y"]) == 2
    assert "not a reward model" in capsys.readouterr().err


def test_chat_command_through_a_pipe(run_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "picochat", "chat", "--ckpt", str(run_dir / "sft"), "--max-new-tokens", "8",
         "--seed", "0", "--system", "Be brief."],
        input="What is 2 + 3?\n米拉住在哪里？\n/reset\nhello\n/quit\n", capture_output=True, text=True,
        encoding="utf-8", timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("bot> ") == 3
    assert "(conversation cleared)" in proc.stdout
