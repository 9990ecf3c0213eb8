"""Iterated RLHF (`rlhf.rounds=N`, the rounds stage): later rounds rank the policy's answers,
retrain the reward model on every ranking so far and run PPO again; a killed round resumes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from conftest import kill_at_checkpoint

from picochat.cli.main import main
from picochat.config import build_config
from picochat.data.preferences import read_preferences
from picochat.report.collect import read_run
from picochat.report.compare import compare_models
from picochat.report.markdown import before_after_section, rounds_section
from picochat.run.registry import run_stages

ROUNDS = ["rlhf.rounds=2", "rlhf.prompts=8"]


def _copy(run_dir, dst):
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns("checkpoint", "checkpoint.old"))
    return dst


def test_the_rounds_stage_is_in_a_run_only_with_later_rounds():
    assert "rounds" not in run_stages(build_config("tiny"))
    assert run_stages(build_config("tiny", overrides={"rlhf.rounds": 3}))[-1] == "rounds"


def test_a_killed_second_round_resumes_to_the_uninterrupted_result(run_dir, tmp_path, capsys):
    clean = _copy(run_dir, tmp_path / "clean")
    # Reward models of 30 steps (round 2's as well), so that the kill below, at round 2's step 5,
    # lands well inside its training however busy the machine is; PPO is redone on the new one.
    assert main(["rm", "--out", str(clean), "--no-progress", "train.max_steps=30"]) == 0
    assert main(["ppo", "--out", str(clean), "--no-progress"]) == 0
    killed = _copy(clean, tmp_path / "killed")
    assert main(["rounds", "--out", str(clean), "--no-progress", *ROUNDS]) == 0
    summary = json.loads((clean / "rounds" / "summary.json").read_text())
    round_2 = clean / "rounds" / "round_2"
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert summary["policy"] == str(round_2 / "ppo")
    # round 2 ranked 8 prompts' answers of round 1's policy ...
    records, _ = read_preferences(round_2 / "label" / "preferences.jsonl")
    assert len(records) == 8 and summary["rounds"][1]["labeled_prompts"] == 8
    # ... its reward model learned from round 1's rankings and those ...
    first, second = (json.loads((d / "summary.json").read_text())["n_train_prompts"]
                     for d in (clean / "rm", round_2 / "rm"))
    assert first < second <= first + 8
    # ... and its PPO continued from round 1's policy, with the KL to the SFT model
    meta = json.loads((round_2 / "ppo" / "config.json").read_text())
    assert meta["init"] == str(clean / "ppo") and meta["reward_model"] == str(round_2 / "rm")
    assert summary["rounds"][1]["kl"] > 0 and summary["kl"] == summary["rounds"][1]["kl"]
    table = "\n".join(rounds_section(read_run(clean)))
    assert "## RLHF rounds" in table and "\n| 2 | 8 |" in table

    proc = subprocess.Popen([sys.executable, "-m", "picochat", "rounds", "--out", str(killed), "--no-progress",
                             *ROUNDS], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_at_checkpoint(proc, killed / "rounds" / "round_2" / "rm" / "checkpoint" / "trainer_state.pt", "step", 5,
                       timeout=180)
    capsys.readouterr()
    assert main(["rounds", "--out", str(killed), "--no-progress", *ROUNDS]) == 0
    out = capsys.readouterr().out
    assert "round_2/label already complete" in out and "resuming from step" in out
    def rankings(run):  # the records less their time stamps
        records, _ = read_preferences(run / "rounds" / "round_2" / "label" / "preferences.jsonl")
        return [(r.prompt, r.responses, r.ranking) for r in records]

    assert rankings(killed) == rankings(clean)
    for name in ("rm/model.safetensors", "ppo/model.safetensors"):
        assert (killed / "rounds" / "round_2" / name).read_bytes() == (round_2 / name).read_bytes(), name
    again = json.loads((killed / "rounds" / "summary.json").read_text())
    assert again["rounds"][1] == {**summary["rounds"][1]}

    # A third round goes on from the two finished ones instead of starting the stage over ...
    round_2_models = {n: (round_2 / n).read_bytes() for n in ("rm/model.safetensors", "ppo/model.safetensors")}
    capsys.readouterr()
    assert main(["rounds", "--out", str(clean), "--no-progress", "rlhf.rounds=3", "rlhf.prompts=8"]) == 0
    out = capsys.readouterr().out
    assert "starting this stage over" not in out
    assert all(f"round_2/{step} already complete" in out for step in ("label", "rm", "ppo"))
    three = json.loads((clean / "rounds" / "summary.json").read_text())
    assert [r["round"] for r in three["rounds"]] == [1, 2, 3] and three["rounds"][1] == summary["rounds"][1]
    round_3 = clean / "rounds" / "round_3"
    assert three["policy"] == str(round_3 / "ppo")
    assert json.loads((round_3 / "ppo" / "config.json").read_text())["init"] == str(round_2 / "ppo")
    assert {n: (round_2 / n).read_bytes() for n in round_2_models} == round_2_models
    # ... and going back to two rounds ends the stage at round 2, without training anything
    assert main(["rounds", "--out", str(clean), "--no-progress", *ROUNDS]) == 0
    assert json.loads((clean / "rounds" / "summary.json").read_text())["policy"] == str(round_2 / "ppo")
    assert "round_2/ppo already complete" in capsys.readouterr().out

    # The report's before/after compares the last round's policy with the run's other models
    cfg = build_config(preset=None, base_file=clean / "config.yaml", overrides={"report.best_of_n_prompts": 0})
    comparison = compare_models(cfg, clean, show_progress=False)
    assert list(comparison["models"]) == ["pretrain", "sft", "ppo", "rounds", "dpo"]
    section = "\n".join(before_after_section(read_run(clean), comparison))
    assert "\n| PPO, last round |" in section and "\n| PPO, last round − SFT |" in section


def test_an_interrupted_round_keeps_the_steps_it_finished(run_dir, tmp_path, capsys, monkeypatch):
    """Ctrl-C while round 2 trains its reward model: the rankings it gathered stay for the rerun
    (the stage's rollback removes only a stage that saved nothing of its own)."""
    import picochat.stages.rounds as rounds

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    run = _copy(run_dir, tmp_path / "run")
    monkeypatch.setattr(rounds, "train_reward_model", interrupted)
    assert main(["rounds", "--out", str(run), "--no-progress", *ROUNDS]) != 0
    labels = run / "rounds" / "round_2" / "label"
    assert (labels / "summary.json").exists() and len(read_preferences(labels / "preferences.jsonl")[0]) == 8
    assert "kept to resume" in capsys.readouterr().err


def test_a_nested_checkpoint_or_finished_part_is_a_stages_own_work(tmp_path):
    from picochat.run.backup import has_own_work

    stage = tmp_path / "rm"
    (stage / "members" / "1").mkdir(parents=True)
    assert not has_own_work(stage)
    (stage / "members" / "1" / "checkpoint").mkdir()
    assert has_own_work(stage)
    rounds_dir = tmp_path / "rounds"
    (rounds_dir / "round_2" / "rm").mkdir(parents=True)
    (rounds_dir / "round_2" / "rm" / "summary.json").write_text("{}")
    assert has_own_work(rounds_dir)


def test_with_people_a_round_waits_for_their_rankings_then_goes_on(run_dir, tmp_path, capsys):
    run = _copy(run_dir, tmp_path / "run")
    args = [*ROUNDS, "rlhf.labeler=people"]
    assert main(["rounds", "--out", str(run), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    wanted = run / "human_labels" / "round_2.jsonl"
    assert f"waits for people: 0 of 8 prompts ranked in {wanted}" in err
    assert f"picochat serve --ckpt {run / 'ppo'} --label-out {wanted}" in err
    # people rank 8 prompts on the labeling page (here: rankings in the page's format)
    records, _ = read_preferences(run / "label" / "preferences.jsonl")
    wanted.parent.mkdir(parents=True, exist_ok=True)
    wanted.write_text("".join(json.dumps(r.to_json()) + "\n" for r in records[:9]))
    assert main(["rounds", "--out", str(run), "--no-progress", *args]) == 0
    copied, _ = read_preferences(run / "rounds" / "round_2" / "label" / "preferences.jsonl")
    assert [(r.prompt, r.responses, r.ranking) for r in copied] == [(r.prompt, r.responses, r.ranking)
                                                                    for r in records[:8]]
    assert json.loads((run / "rounds" / "summary.json").read_text())["rounds"][1]["labeled_prompts"] == 8
