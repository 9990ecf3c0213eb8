"""The run report end to end on the tiny pipeline (`run_dir`): every artifact exists, every figure
in report.md is the one in the run's files (change a file and the report changes with it), a run
without some stages reads n/a, the time estimate prices only what will run, and a pipeline killed
in the middle of PPO resumes to exactly the uninterrupted result."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from conftest import TINY, kill_at_checkpoint

from picochat.cli.main import main

PLOTS = ("losses.png", "reward_model.png", "ppo.png", "dpo.png", "before_after.png", "best_of_n.png")


def _copy_run(run_dir: Path, dst: Path) -> Path:
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns("checkpoint", "checkpoint.old"))
    return dst


def _row(report: str, first_cell: str, after: str = "") -> list[str]:
    """The cells of the first table row starting with `first_cell` (after the line `after`, if given)."""
    text = report[report.index(after):] if after else report
    for line in text.splitlines():
        if line.startswith(f"| {first_cell} |"):
            return [c.strip() for c in line.strip("|").split(" | ")]
    raise AssertionError(f"no row {first_cell!r} in the report")


def test_run_writes_the_report_its_plots_and_its_comparison(run_dir):
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    for heading in ("## Headline", "**How to read this.**", "## Stages", "## Curves", "## Before and after",
                    "### Per task type", "### Per language", "## Best of n", "## Sample conversations"):
        assert heading in report, heading
    for name in PLOTS:
        png = run_dir / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"](plots/{name})" in report
    comparison = json.loads((run_dir / "report" / "compare.json").read_text(encoding="utf-8"))
    assert set(comparison["models"]) == {"pretrain", "sft", "ppo", "dpo"}
    n = len(comparison["prompts"])
    assert n == 16 and {p["lang"] for p in comparison["prompts"]} == {"en", "zh"}
    for model in comparison["models"].values():  # every model answered the same prompts, both ways
        assert [len(model[d]) for d in ("greedy", "sampled")] == [n, n]
    best = comparison["best_of_n"]  # the SFT model's 16 answers to each prompt, scored by gold and the RM
    assert len(best) == n and all(len(p["gold"]) == len(p["rm"]) == 16 for p in best)
    assert "the reward model's best-of-16 reached" in report and "PPO gained" in report
    sharpened = comparison["sharpened"]  # the SFT model at lower temperatures, the line RL has to beat
    assert [s["temperature"] for s in sharpened] == [0.7, 0.5, 0.4] and all(len(s["gold"]) == n for s in sharpened)
    assert "| SFT at T=0.7 (no training) |" in report and "With no training at all, sampling the SFT model" in report
    summary = json.loads((run_dir / "report" / "summary.json").read_text(encoding="utf-8"))
    assert summary["n_prompts"] == n and len(summary["plots"]) == len(PLOTS)
    # The benchmark card: every model by log-likelihood, the chat models also in the chat form.
    assert "## Benchmark card" in report and set(summary["benchmark_card"]) == {"pretrain", "sft", "ppo", "dpo"}
    loglik, chat = report.split("**loglik**")[1].split("**chat**")
    for stage, name in (("pretrain", "pretrained"), ("sft", "SFT"), ("ppo", "PPO"), ("dpo", "DPO")):
        card = json.loads((run_dir / "report" / f"card_{stage}.json").read_text(encoding="utf-8"))
        arc = card["results"]["loglik"]["arc_easy"]
        assert arc["n"] == 3
        cells = _row(loglik, name)
        assert cells[1] == f"{arc['score']:.3f} ±{(arc['ci95'][1] - arc['ci95'][0]) / 2:.3f}"
        assert cells[-1] == f"{card['core']['loglik']:+.3f}"
        assert (f"| {name} |" in chat.split("##")[0]) == (stage != "pretrain")
    for stage in ("world", "tokenizer", "pretrain", "sft", "label", "rm", "ppo", "dpo"):
        s = json.loads((run_dir / stage / "summary.json").read_text(encoding="utf-8"))
        assert s["peak_rss_mb"] > 0, stage  # every stage records its own peak memory
    for stage in ("pretrain", "sft", "label", "rm", "ppo", "dpo"):
        s = json.loads((run_dir / stage / "summary.json").read_text(encoding="utf-8"))
        assert s["tokens"] > 0 and s["tokens_per_s"] > 0, stage
    for stage in ("pretrain", "sft", "rm", "ppo", "dpo"):
        assert 0 < json.loads((run_dir / stage / "summary.json").read_text())["mfu"] < 1, stage
    rm = json.loads((run_dir / "rm" / "summary.json").read_text())  # what the RM's picks buy, vs the oracle's
    assert rm["best_of_4_prompts"] > 0 and rm["best_of_4_gold_gain"] <= rm["best_of_4_oracle_gain"]
    assert f"scores {rm['best_of_4_gold_gain']:+.3f} gold over a random one" in report
    for m, name in (("ppo", "PPO"), ("dpo", "DPO")):  # each tuner's own, larger evaluation sits beside the comparison
        s = json.loads((run_dir / m / "summary.json").read_text())
        assert (f"{name}'s own evaluation ({m}/summary.json, {s['gold']['n_prompts']} held-out prompts × "
                f"{s['gold']['n_samples']} T=1 samples): gold {s['gold_score_sft_sampled']:.3f} (SFT) → "
                f"{s['gold_score_sampled']:.3f}, {s['gold_gain_sampled']['mean']:+.3f}") in report


def test_report_figures_are_the_run_files_figures(run_dir, tmp_path, capsys):
    run = _copy_run(run_dir, tmp_path / "run")
    assert main(["report", "--out", str(run), "--no-progress"]) == 0
    report = (run / "report.md").read_text(encoding="utf-8")
    pre = json.loads((run / "pretrain" / "summary.json").read_text())
    cells = _row(report, "pretrain", "## Stages")
    assert cells[3] == f"{pre['tokens_per_s']:,.0f}" and cells[4] == f"{pre['mfu'] * 100:.1f}%"
    assert cells[5] == f"{pre['peak_rss_mb']:,.0f} MB"

    # The before/after cells are statistics of the per-prompt scores in compare.json ...
    comparison = json.loads((run / "report" / "compare.json").read_text(encoding="utf-8"))
    sft = comparison["models"]["sft"]["sampled"]
    cells = _row(report, "SFT", "### T=1 samples")
    assert cells[1] == f"{statistics.fmean(r['rm'] for r in sft):.3f}"
    assert cells[3] == f"{statistics.fmean(r['gold'] for r in sft):.3f}"
    assert cells[4] == f"{statistics.median(r['gold'] for r in sft):.3f}"
    # ... and those are the gold scorer's and the reward model's judgments of the stored answers.
    from picochat.reward_model import RewardModel
    from picochat.world import GoldScorer, read_world

    gold = GoldScorer(read_world(run / "world" / "world.json")[0])
    prompts = [p["messages"] for p in comparison["prompts"]]
    golds = [gold.score(p, r["answer"], finished=r["finished"]) for p, r in zip(prompts, sft)]
    assert golds == [r["gold"] for r in sft]
    rm = RewardModel.load(run / "rm").score(prompts, [r["answer"] for r in sft], [r["finished"] for r in sft])
    assert max(abs(a - r["rm"]) for a, r in zip(rm, sft)) < 1e-3
    # Where the points went: each answer's lost points are the gold scorer's, the report's row their mean.
    greedy = comparison["models"]["sft"]["greedy"]
    lost = [gold.breakdown(p, r["answer"], finished=r["finished"]).lost_points() for p, r in zip(prompts, greedy)]
    assert [r["lost"] for r in greedy] == lost
    cells = _row(report, "SFT", "## Where the answers lose gold points")
    assert cells[1:3] == ["greedy", f"{statistics.fmean(r['gold'] for r in greedy):.3f}"]
    assert cells[3:6] == [f"{statistics.fmean(x[part] for x in lost):.3f}" for part in ("format", "style", "safety")]
    assert f"SFT's greedy answers lose {float(cells[6]):.3f} to behaviour" in report

    # Change the files: the regenerated report says what they now say.
    pre["tokens_per_s"] = 12345.0
    (run / "pretrain" / "summary.json").write_text(json.dumps(pre))
    for r in sft:
        r["gold"] = 0.5
    (run / "report" / "compare.json").write_text(json.dumps(comparison, ensure_ascii=False), encoding="utf-8")
    capsys.readouterr()
    assert main(["report", "--out", str(run), "--no-progress"]) == 0
    assert "reusing the comparison" in capsys.readouterr().out  # models unchanged: no model ran
    report = (run / "report.md").read_text(encoding="utf-8")
    assert _row(report, "pretrain", "## Stages")[3] == "12,345"
    assert _row(report, "SFT", "### T=1 samples")[3:5] == ["0.500", "0.500"]


def test_report_reads_na_for_what_a_run_does_not_have(run_dir, tmp_path, monkeypatch):
    run = _copy_run(run_dir, tmp_path / "run")
    for stage in ("ppo", "dpo", "world"):  # no RL stages, and no built-in world (so no gold scorer)
        shutil.rmtree(run / stage)
    assert main(["report", "--out", str(run), "--no-progress"]) == 0
    report = (run / "report.md").read_text(encoding="utf-8")
    assert _row(report, "ppo", "## Stages")[1:] == ["n/a"] * 5 + ["not run"]
    comparison = json.loads((run / "report" / "compare.json").read_text(encoding="utf-8"))
    assert set(comparison["models"]) == {"pretrain", "sft"}
    assert comparison["source"].endswith("preferences_test.jsonl")  # the held-out labeled prompts instead
    sft = _row(report, "SFT", "### T=1 samples")
    assert sft[3:5] == ["n/a", "n/a"] and sft[1] != "n/a"  # no gold scorer; the reward model still scores
    assert not (run / "plots" / "ppo.png").exists() and not (run / "plots" / "dpo.png").exists()
    assert (run / "plots" / "losses.png").exists()

    # Without matplotlib: the tables all the same, a line on how to get the plots, no stale pictures.
    monkeypatch.setattr("picochat.report.write.matplotlib_available", lambda: False)
    assert main(["report", "--out", str(run), "--no-progress"]) == 0
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "pip install 'picochat[report]'" in report and "### T=1 samples" in report
    assert not list((run / "plots").glob("*.png"))


def test_plan_estimates_only_the_stages_that_will_run(run_dir, tmp_path, capsys):
    from picochat.config import build_config, parse_overrides
    from picochat.run.estimate import Speeds, stage_work
    from picochat.run.plan import print_plan

    run = _copy_run(run_dir, tmp_path / "run")
    cfg = build_config("tiny", overrides=parse_overrides(TINY))  # the config the fixture ran
    # Work counted from the config: pretraining trains on steps x batch x seq_len tokens.
    t = cfg.pretrain.train
    assert (stage_work("pretrain", cfg, 50).train_tokens
            == t.max_steps * t.batch_size * t.grad_accum_steps * cfg.pretrain.seq_len)
    assert stage_work("world", cfg, 50) is None
    speeds = Speeds(train_tokens_per_s=1000.0, sample_step_s=0.01)
    assert stage_work("dpo", cfg, 100).seconds(speeds) > stage_work("dpo", cfg, 50).seconds(speeds)

    shutil.rmtree(run / "dpo")
    capsys.readouterr()
    estimate = print_plan(cfg, run, ["ppo", "dpo", "report"])
    out = capsys.readouterr().out
    assert "training tokens/s" in out
    assert estimate["ppo"] == 0 and estimate["dpo"] > 0 and estimate["report"] > 0
    lines = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]
             if line.startswith("  ") and "total" not in line}
    assert lines == {"ppo": "reuse", "dpo": "run", "report": "run"}


def test_pipeline_killed_in_ppo_resumes_to_the_uninterrupted_result(run_dir, tmp_path):
    """SIGKILL (no chance to save) in the middle of PPO under `picochat run`; the rerun resumes from
    the last checkpoint and ends with the same log, weights and evaluation as an uninterrupted run."""
    from safetensors.torch import load_file

    args = ["run", "--stages", "ppo", "--no-progress", "--preset", "tiny", *TINY,
            f"ppo.init={run_dir / 'sft'}", f"ppo.reward_model={run_dir / 'rm'}",
            "ppo.train.max_steps=12", "ppo.train.ckpt_every=2", "ppo.train.log_every=4"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for d in (clean, killed):
        shutil.copytree(run_dir / "world", d / "world")  # PPO's prompts and gold scorer
    # Every run in a fresh process alike, as a user would run it (one thread: steady on a busy machine).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "picochat", args[0], "--out", str(out), *args[1:]]

    subprocess.run(command(clean), check=True, env=env, stdout=subprocess.DEVNULL, timeout=300)
    proc = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    kill_at_checkpoint(proc, killed / "ppo" / "checkpoint" / "trainer_state.pt", "iteration", 4, timeout=300)
    assert not (killed / "ppo" / "summary.json").exists()

    resumed = subprocess.run(command(killed), check=True, env=env, capture_output=True, text=True, timeout=300)
    assert "[ppo] resuming from iteration" in resumed.stdout
    timing = ("seconds", "rollout_tokens_per_s", "train_tokens_per_s")

    def log(run: Path) -> list[dict]:
        rows = [json.loads(x) for x in (run / "ppo" / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in timing} for r in rows]

    assert [r["iteration"] for r in log(killed)] == list(range(1, 13))
    assert log(killed) == log(clean)
    a, b = load_file(str(clean / "ppo" / "model.safetensors")), load_file(str(killed / "ppo" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (json.loads((r / "ppo" / "summary.json").read_text()) for r in (clean, killed))
    for key in ("gold_score", "gold_score_sampled", "rm_score_sampled", "kl"):
        assert sa[key] == sb[key], key


def test_held_out_prompts_too_long_for_the_models_are_left_out_not_fatal(run_dir):
    # A report.max_new_tokens that leaves room only for the shortest prompts: the comparison takes
    # the prompts that fit (instead of raising for the whole batch, as long HH dialogues once did).
    from picochat.config import build_config
    from picochat.core.chat import render_prompt
    from picochat.core.tokenizer import Tokenizer
    from picochat.report.compare import answer_room, compared_models, held_out_prompts

    tok = Tokenizer.load(run_dir / "sft" / "tokenizer.json")
    everything, _ = held_out_prompts(run_dir, 10_000)
    lengths = sorted(len(render_prompt(tok, p.messages)) for p in everything)
    cfg = build_config(base_file=run_dir / "config.yaml")
    cfg.report.max_new_tokens = cfg.model.max_seq_len - lengths[len(lengths) // 2]  # half of them fit
    kept, _ = held_out_prompts(run_dir, 10_000, answer_room(cfg, compared_models(run_dir)))
    assert 0 < len(kept) < len(everything)
    assert all(len(render_prompt(tok, p.messages)) <= lengths[len(lengths) // 2] for p in kept)
    cfg.report.max_new_tokens = cfg.model.max_seq_len  # no room for any prompt
    assert held_out_prompts(run_dir, 10_000, answer_room(cfg, compared_models(run_dir)))[0] == []


def test_benchmark_card_in_the_chat_form_only_leaves_the_pretrained_model_out(run_dir, tmp_path):
    run = _copy_run(run_dir, tmp_path / "run")
    assert main(["report", "--out", str(run), "--no-progress", "eval.forms=[chat]", "eval.limit=2"]) == 0
    report = (run / "report.md").read_text(encoding="utf-8")
    section = report.split("## Benchmark card")[1].split("## Sample conversations")[0]
    assert "**chat**" in section and "**loglik**" not in section and "| pretrained |" not in section
    assert "| SFT |" in section and "first 2 items of each set" in section
