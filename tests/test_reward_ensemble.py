"""Reward-model ensembles (`rm.ensemble=M`): the conservative combination of the members' scores,
and the stage that trains them, resumes them and hands every consumer the combined score."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import kill_at_checkpoint

from picochat.cli.main import main
from picochat.data.preferences import read_preferences
from picochat.report.markdown import ensemble_line
from picochat.reward_model import RewardEnsemble, RewardModel, combine_member_scores, load_reward_model


def test_combined_scores_against_hand_computed_values():
    scores = torch.tensor([[1.0, 0.0, 2.0],
                           [3.0, 0.0, -2.0]])  # (members, responses); mean 2, 0, 0; population std 1, 0, 2
    assert combine_member_scores(scores, "mean").tolist() == [2.0, 0.0, 0.0]
    assert combine_member_scores(scores, "mean_minus_std").tolist() == [1.0, 0.0, -2.0]
    assert combine_member_scores(scores, "mean_minus_std", std_coef=0.5).tolist() == [1.5, 0.0, -1.0]
    assert combine_member_scores(scores, "min").tolist() == [1.0, 0.0, -2.0]
    three = torch.tensor([[0.0], [1.0], [5.0]])  # mean 2, std sqrt(14/3) = 2.1602
    assert combine_member_scores(three, "mean_minus_std").item() == pytest.approx(2 - (14 / 3) ** 0.5)
    # members that agree: no penalty, whatever the coefficient
    agree = torch.tensor([[0.5, -1.0], [0.5, -1.0]])
    assert combine_member_scores(agree, "mean_minus_std", std_coef=3.0).tolist() == [0.5, -1.0]
    with pytest.raises(ValueError, match="unknown ensemble combine 'median'"):
        combine_member_scores(scores, "median")


def _copy(run_dir, dst):
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns("checkpoint", "checkpoint.old"))
    return dst


def test_an_ensemble_is_trained_scored_conservatively_and_read_by_every_consumer(run_dir, tmp_path, capsys):
    run = _copy(run_dir, tmp_path / "run")
    assert main(["rm", "--out", str(run), "--no-progress", "ensemble=2"]) == 0
    summary = json.loads((run / "rm" / "summary.json").read_text())
    seed = summary["members"][0]["seed"]
    assert [m["seed"] for m in summary["members"]] == [seed, seed + 1]
    assert summary["ensemble"] == {"combine": "mean_minus_std", "std_coef": 1.0}
    assert json.loads((run / "rm" / "ensemble.json").read_text())["members"] == ["members/1"]
    # the first member is the single reward model the same settings train: its seed, its data
    assert (run / "rm" / "model.safetensors").read_bytes() == (run_dir / "rm" / "model.safetensors").read_bytes()

    reward = load_reward_model(run / "rm")
    assert isinstance(reward, RewardEnsemble) and len(reward.members) == 2
    assert isinstance(load_reward_model(run_dir / "rm"), RewardModel)  # no ensemble.json: one model
    records, _ = read_preferences(run / "label" / "preferences_test.jsonl")
    prompts = [r.prompt for r in records for _ in r.responses]
    responses = [x for r in records for x in r.responses]
    members = reward.member_scores(prompts, responses)  # (2, N), each member normalised
    assert members.shape == (2, len(responses))
    assert (members[0] - members[1]).abs().max() > 1e-3  # two seeds, two opinions
    expected = combine_member_scores(members, "mean_minus_std") * reward.gain + reward.bias
    assert reward.score(prompts, responses) == pytest.approx(expected.tolist(), abs=1e-5)

    line = ensemble_line(summary)
    assert "an ensemble of 2" in line and f"seed {seed + 1}:" in line and "mean − 1 × std" in line
    # PPO reads the ensemble as its reward model
    assert main(["ppo", "--out", str(run), "--no-progress", "train.max_steps=1"]) == 0
    ppo = json.loads((run / "ppo" / "summary.json").read_text())
    assert ppo["rm_score_sampled"] is not None and ppo["iterations"] == 1


def test_a_killed_ensemble_resumes_to_the_uninterrupted_result(run_dir, tmp_path, capsys):
    args = ["ensemble=2", "train.max_steps=20", "train.ckpt_every=5", "train.eval_every=0"]
    clean, killed = _copy(run_dir, tmp_path / "clean"), _copy(run_dir, tmp_path / "killed")
    assert main(["rm", "--out", str(clean), "--no-progress", *args]) == 0

    proc = subprocess.Popen([sys.executable, "-m", "picochat", "rm", "--out", str(killed), "--no-progress", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    member = killed / "rm" / "members" / "1"
    kill_at_checkpoint(proc, member / "checkpoint" / "trainer_state.pt", "step", 5, timeout=180)
    assert (killed / "rm" / "member.json").exists() and not (member / "member.json").exists()
    capsys.readouterr()

    assert main(["rm", "--out", str(killed), "--no-progress", *args]) == 0
    out = capsys.readouterr().out
    assert "member 1 already trained" in out and "resuming from step" in out
    for name in ("model.safetensors", "members/1/model.safetensors", "ensemble.json"):
        assert (killed / "rm" / name).read_bytes() == (clean / "rm" / name).read_bytes(), name
    a, b = (json.loads((r / "rm" / "summary.json").read_text()) for r in (clean, killed))
    assert a["members"] == b["members"] and a["gold_pair_accuracy"] == b["gold_pair_accuracy"]
