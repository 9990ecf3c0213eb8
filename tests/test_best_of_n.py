"""Best-of-n curves: the exact expectation over subsets, the KL of best-of-n, the gains and the
sentence that reads them."""

from __future__ import annotations

import itertools
import math
import random

from picochat.report.best_of_n import best_of_n_curves, expected_pick_score, gain_at_kl, kl_best_of_n, reading


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
