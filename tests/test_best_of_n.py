"""Best-of-n curves: the exact expectation over subsets, the KL of best-of-n, the gains and the
sentence that reads them."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from picochat.core.generate import SamplingConfig, generate
from picochat.core.model import GPT, ModelConfig
from picochat.eval.sharpened import Tempered
from picochat.report.best_of_n import (
    best_of_n_curves,
    expected_pick_score,
    gain_at_kl,
    kl_best_of_n,
    reading,
    sharpening_gain_at_kl,
    sharpening_points,
)


def test_expected_pick_by_hand():
    # subsets of 2 of 3: {0,1} picks 1 (score 2), {0,2} picks 2 (3), {1,2} picks 1 (2)
    assert abs(expected_pick_score([0.1, 0.5, 0.3], [1.0, 2.0, 3.0], 2) - 7 / 3) < 1e-12
    assert expected_pick_score([0.1, 0.5, 0.3], [1.0, 2.0, 3.0], 1) == 2.0  # the mean
    assert expected_pick_score([0.1, 0.5, 0.3], [1.0, 2.0, 3.0], 3) == 2.0  # the proxy's favourite


def test_expected_pick_equals_the_mean_over_every_subset():
    rng = random.Random(0)
    proxy = [rng.random() for _ in range(7)]
    target = [rng.random() for _ in range(7)]
    for n in range(1, 8):
        subsets = list(itertools.combinations(range(7), n))
        brute = sum(target[max(s, key=lambda i: proxy[i])] for s in subsets) / len(subsets)
        assert abs(expected_pick_score(proxy, target, n) - brute) < 1e-12


def test_kl_of_best_of_n():
    assert kl_best_of_n(1) == 0.0
    assert abs(kl_best_of_n(2) - (math.log(2) - 0.5)) < 1e-12
    assert abs(kl_best_of_n(16) - (math.log(16) - 15 / 16)) < 1e-12


def test_curves_the_oracle_bounds_the_reward_model_and_the_reading():
    rng = random.Random(1)
    per_prompt = []
    for _ in range(30):
        gold = [rng.random() for _ in range(8)]
        per_prompt.append({"gold": gold, "rm": [g + rng.gauss(0, 0.3) for g in gold]})  # a noisy reward model
    curves = best_of_n_curves(per_prompt)
    assert curves["n"] == [1, 2, 4, 8] and curves["samples"] == 8
    assert abs(curves["gold"][0]["mean"]) < 1e-12 and abs(curves["rm"][0]["mean"]) < 1e-12  # n=1: a random answer
    for rm, oracle in zip(curves["rm"][1:], curves["gold"][1:]):
        assert 0 < rm["mean"] <= oracle["mean"]
    assert abs(gain_at_kl(curves, "gold", 0.0)) < 1e-12
    assert gain_at_kl(curves, "gold", 99.0) is None
    point = {"name": "PPO", "kl": curves["kl"][2], "gain": {"mean": curves["rm"][2]["mean"] / 2, "ci95": [0, 0]}}
    text = reading(curves, [point])
    assert "PPO gained" in text and "50% of its reward model's best-of-n gain at equal KL" in text
    assert "the reward model's best-of-8 reached" in text


def test_sharpening_points_and_their_reading():
    """The SFT model at lower temperatures, against the same base as the curves (each prompt's
    mean T=1 gold), interpolated from (KL 0, gain 0), and the sentence that compares RL with it."""
    per_prompt = [{"gold": [0.2, 0.4], "rm": [0.0, 1.0]}, {"gold": [0.6, 0.8], "rm": [1.0, 0.0]}]  # bases 0.3, 0.7
    sharpened = [{"temperature": 0.7, "kl": 0.5, "gold": [0.4, 0.8]}, {"temperature": 0.5, "kl": 1.5,
                                                                       "gold": [0.5, 0.9]}]
    points = sharpening_points(per_prompt, sharpened)
    assert [p["gain"]["mean"] for p in points] == [pytest.approx(0.1), pytest.approx(0.2)]
    assert points[0]["name"] == "SFT at T=0.7 (no training)"
    assert sharpening_gain_at_kl(points, 0.25) == pytest.approx(0.05)  # half way to the first point
    assert sharpening_gain_at_kl(points, 1.0) == pytest.approx(0.15)
    assert sharpening_gain_at_kl(points, 2.0) is None and sharpening_points(per_prompt, None) == []
    # just past the lowest temperature's KL, within that KL's standard error: read as equal to it
    sharpened[1]["kl_stderr"] = 0.2
    points = sharpening_points(per_prompt, sharpened)
    assert sharpening_gain_at_kl(points, 1.6) == pytest.approx(0.2)
    assert sharpening_gain_at_kl(points, 1.8) is None
    curves = best_of_n_curves(per_prompt)
    ppo = {"name": "PPO", "kl": 0.5, "gain": {"mean": 0.05, "ci95": [0, 0.1]}}
    text = reading(curves, [ppo], points)
    assert "no more than lowering the SFT model's temperature to the same KL buys (+0.100)" in text
    assert "sampling the SFT model at T=0.7 gains +0.100 at KL 0.50" in text and text[0].isupper()
    # past every temperature's KL: compared with the best of them, which sits at a lower KL
    for gain, verdict in ((0.15, "no more"), (0.25, "more")):
        far = {"name": "PPO", "kl": 2.5, "gain": {"mean": gain, "ci95": [0, 0.3]}}
        assert (f", {verdict} than the SFT model sampled at T=0.5 gains with no training, at a lower KL (+0.200 "
                "at KL 1.50)") in reading(curves, [far], points)


def test_a_tempered_model_is_the_model_at_that_temperature():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=32,
                            max_seq_len=16))
    ids = torch.randint(0, 64, (2, 5))
    assert torch.allclose(Tempered(model, 0.5)(ids), model(ids) * 2)
    greedy = SamplingConfig(max_new_tokens=4, temperature=0.0)
    assert [r.tokens for r in generate(Tempered(model, 0.5), [[1, 2, 3]], greedy)] == \
        [r.tokens for r in generate(model, [[1, 2, 3]], greedy)]  # the argmax does not move
    with pytest.raises(ValueError):
        Tempered(model, 0.0)
