"""The simulated annotator (noisy Copeland rankings) and the resumable labeling loop."""

from __future__ import annotations

import collections
import json
import random
from itertools import combinations

import pytest
import torch

from picochat.config import LabelConfig
from picochat.core.model import GPT, ModelConfig
from picochat.data.preferences import prompt_key, read_preferences
from picochat.feedback.autolabel import (
    gold_ranking,
    label_prompts,
    noisy_ranking,
    pair_agreement,
    world_label_prompts,
)
from picochat.world import ChatTasksConfig, GoldScorer, WorldConfig, read_world, write_chat_tasks, write_world


def _reversed_fraction(p: float, trials: int = 3000, k: int = 4) -> float:
    rng = random.Random(0)
    reversed_pairs = total = 0
    for _ in range(trials):
        scores = [rng.random() for _ in range(k)]
        ranking = noisy_ranking(scores, p, 0.0, rng)
        pos = {i: g for g, group in enumerate(ranking) for i in group}
        for i, j in combinations(range(k), 2):
            total += 1
            reversed_pairs += (pos[i] - pos[j]) * (scores[j] - scores[i]) < 0  # better one ranked lower
    return reversed_pairs / total


def test_no_noise_gives_the_gold_order_with_ties_grouped():
    scores = [0.3, 0.9, 0.3, 0.1]
    assert noisy_ranking(scores, 0.0, 0.0, random.Random(0)) == [[1], [0, 2], [3]]
    assert gold_ranking(scores, 0.0) == [[1], [0, 2], [3]]
    rng = random.Random(1)
    for _ in range(200):
        scores = [rng.choice([0.0, 0.25, 0.5, 1.0]) for _ in range(rng.randint(2, 9))]
        expected = [sorted(i for i, s in enumerate(scores) if s == v) for v in sorted(set(scores), reverse=True)]
        assert noisy_ranking(scores, 0.0, 0.0, rng) == gold_ranking(scores, 0.0) == expected


def test_ties_within_margin_and_all_equal():
    assert gold_ranking([0.5, 0.52, 0.9], 0.05) == [[2], [0, 1]]
    # "within the margin" is not transitive: 0 ~ 0.1 ~ 0.2 but 0.2 > 0; Copeland still orders them
    assert gold_ranking([0.0, 0.1, 0.2], 0.15) == [[2], [1], [0]]
    # all equal: one group whatever the noise (a tie is never flipped), so no training pair
    for p in (0.0, 0.5, 1.0):
        assert noisy_ranking([0.4] * 4, p, 0.0, random.Random(0)) == [[0, 1, 2, 3]]
    # an annotator that is always wrong reverses the order
    assert noisy_ranking([0.1, 0.9, 0.5], 1.0, 0.0, random.Random(0)) == [[0], [2], [1]]


def test_noise_reverses_about_flip_prob_of_the_pairs():
    assert _reversed_fraction(0.0) == 0.0
    rate = _reversed_fraction(0.2)
    assert 0.1 < rate < 0.3, rate  # measured 0.121: Copeland undoes part of the flips, cycles become ties


def test_pair_agreement():
    # reference orders 0 > 1 > 2 (3 pairs); the ranking keeps 0 > 2 and 1 > 2 but ties 0 and 1
    assert pair_agreement([[0, 1], [2]], [[0], [1], [2]]) == (2, 3)
    assert pair_agreement([[2], [1], [0]], [[0], [1], [2]]) == (0, 3)
    assert pair_agreement([[0], [1, 2]], [[0], [1, 2]]) == (2, 2)  # the tied reference pair is not counted


# ----------------------------------------------------------------------------------------------
# End to end with a tiny random model.

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from picochat.core.tokenizer import train_tokenizer
    from picochat.data.readers import iter_corpus

    world_dir = tmp_path_factory.mktemp("label_world")
    write_world(world_dir, WorldConfig(seed=7, n_characters=12, n_places=6, corpus_mb=0.05))
    write_chat_tasks(world_dir, read_world(world_dir)[0], ChatTasksConfig(n_train=200, n_test=40))
    tok = train_tokenizer(iter_corpus([world_dir / "corpus.jsonl"]), vocab_size=400, show_progress=False)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64 * ((tok.vocab_size + 63) // 64), d_model=32, n_layers=1, n_heads=2,
                            n_kv_heads=2, ffn_hidden=64, max_seq_len=128))
    return world_dir, tok, model, GoldScorer(read_world(world_dir)[0])


CFG = LabelConfig(k=3, batch_prompts=2, max_new_tokens=12, seed=3)


def _comparable(path):
    """Every record's JSON without the wall-clock timestamp."""
    records, errors = read_preferences(path)
    assert errors == []
    out = []
    for r in records:
        d = r.to_json()
        d["meta"] = {k: v for k, v in d["meta"].items() if k != "time"}
        out.append(d)
    return out


def test_world_label_prompts_are_unique_deterministic_and_nested(setup):
    world_dir = setup[0]
    a = world_label_prompts(world_dir, "train", 20, seed=0)
    assert a == world_label_prompts(world_dir, "train", 20, seed=0)
    assert world_label_prompts(world_dir, "train", 30, seed=0)[:20] == a
    assert len({prompt_key(m) for m, _ in a}) == 20
    assert all(info["task"] and info["lang"] in ("en", "zh") for _, info in a)
    test = world_label_prompts(world_dir, "test", 0, seed=0)
    assert 0 < len(test) <= 40 and not {prompt_key(m) for m, _ in test} & {prompt_key(m) for m, _ in a}


def test_an_even_task_mix_takes_the_task_types_in_turn(setup):
    world_dir = setup[0]
    natural = world_label_prompts(world_dir, "train", 0, seed=0)
    counts = collections.Counter(info["task"] for _, info in natural)
    rarest = min(counts.values())
    assert max(counts.values()) > 2 * rarest  # the world's mix is uneven
    n = len(counts) * rarest
    even = world_label_prompts(world_dir, "train", n, seed=0, task_mix="even")
    assert collections.Counter(info["task"] for _, info in even) == {task: rarest for task in counts}
    assert world_label_prompts(world_dir, "train", n + 7, seed=0, task_mix="even")[:n] == even  # nested
    # every prompt once, each type's prompts in the natural order's order
    every = world_label_prompts(world_dir, "train", 0, seed=0, task_mix="even")
    assert sorted(map(repr, every)) == sorted(map(repr, natural))
    for task in counts:
        assert [m for m, i in every if i["task"] == task] == [m for m, i in natural if i["task"] == task]
    with pytest.raises(ValueError, match="task_mix must be one of natural, even"):
        world_label_prompts(world_dir, "train", 5, seed=0, task_mix="balanced")


def test_label_prompts_writes_k_wise_records(setup, tmp_path):
    world_dir, tok, model, scorer = setup
    prompts = world_label_prompts(world_dir, "train", 5, seed=0)
    summary = label_prompts(model, tok, scorer, prompts, tmp_path / "prefs.jsonl", CFG, "fp32", show_progress=False)
    assert summary["n_prompts"] == summary["n_new"] == 5 and summary["k"] == 3
    records, errors = read_preferences(tmp_path / "prefs.jsonl")
    assert errors == [] and len(records) == 5
    for r, (messages, info) in zip(records, prompts):
        assert r.prompt == messages and len(r.responses) == 3
        assert sorted(i for group in r.ranking for i in group) == [0, 1, 2]
        assert r.meta["labeler"] == "auto" and r.meta["task"] == info["task"]
        assert r.meta["gold_ranking"] == gold_ranking(r.meta["gold_scores"], CFG.tie_margin)
        assert all(0.0 <= s <= 1.0 for s in r.meta["gold_scores"])
    assert 0.0 <= summary["mean_gold"] <= 1.0


def test_a_killed_run_resumes_to_what_an_uninterrupted_run_writes(setup, tmp_path):
    world_dir, tok, model, scorer = setup
    prompts = world_label_prompts(world_dir, "train", 6, seed=0)
    full, killed = tmp_path / "full.jsonl", tmp_path / "killed.jsonl"
    label_prompts(model, tok, scorer, prompts, full, CFG, "fp32", show_progress=False)

    lines = full.read_text(encoding="utf-8").splitlines(keepends=True)
    # killed mid-write in the second batch: 3 whole records and half of the 4th line
    killed.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2], encoding="utf-8")
    summary = label_prompts(model, tok, scorer, prompts, killed, CFG, "fp32", show_progress=False)
    assert summary["n_new"] == 3 and summary["n_prompts"] == 6
    records, _ = read_preferences(killed)
    assert len({prompt_key(r.prompt) for r in records}) == len(records) == 6
    assert _comparable(killed) == _comparable(full)

    again = label_prompts(model, tok, scorer, prompts, killed, CFG, "fp32", show_progress=False)
    assert again["n_new"] == 0 and len(killed.read_text(encoding="utf-8").splitlines()) == 6
    assert json.dumps(_comparable(killed)) == json.dumps(_comparable(full))

    # killed while writing the very first record: the file holds only a torn line
    first = tmp_path / "first.jsonl"
    first.write_text(lines[0][:10], encoding="utf-8")
    assert label_prompts(model, tok, scorer, prompts, first, CFG, "fp32", show_progress=False)["n_new"] == 6
    assert _comparable(first) == _comparable(full)
