"""World chat tasks: deterministic, every task and language present, held out by prompt, imperfect
demonstrations only in train, and references the gold scorer agrees with."""

import importlib
import json
import statistics

import pytest

from picochat.world import (
    ATTRIBUTES,
    ChatExample,
    ChatTasksConfig,
    GoldScorer,
    WorldConfig,
    build_world,
    generate_chat_tasks,
    read_chat_examples,
    write_chat_tasks,
)
from picochat.world.tasks import TASKS, heldout, user_texts

WORLD = WorldConfig(seed=7, n_characters=12, n_places=6, corpus_mb=0.05)
CFG = ChatTasksConfig(n_train=1200, n_test=120)


@pytest.fixture(scope="module")
def world():
    return build_world(WORLD)


@pytest.fixture(scope="module")
def examples(world):
    return generate_chat_tasks(world, CFG)


def _split(examples, split):
    return [e for e in examples if e.split == split]


def test_deterministic_and_sized(world, examples):
    assert generate_chat_tasks(world, CFG) == examples
    assert generate_chat_tasks(world, ChatTasksConfig(seed=5, n_train=1200, n_test=120)) != examples
    train, test = _split(examples, "train"), _split(examples, "test")
    assert len(train) == CFG.n_train and len(test) == CFG.n_test
    for split in (train, test):
        assert {(e.task, e.lang) for e in split} == {(t, lang) for t in TASKS for lang in ("en", "zh")}
    share_zh = sum(e.lang == "zh" for e in train) / len(train)
    assert abs(share_zh - CFG.zh_fraction) < 0.05
    n_fact = sum(e.task == "fact" for e in train)
    assert n_fact == round(0.45 * CFG.n_train)


def test_messages_well_formed(examples):
    for e in examples:
        roles = [m["role"] for m in e.messages]
        assert roles[-1] == "assistant" and roles[0] == "user"
        assert all(r1 != r2 for r1, r2 in zip(roles, roles[1:]))  # user/assistant alternate
        assert e.prompt() == [dict(m) for m in e.messages[:-1]]
        assert all(m["content"].strip() for m in e.messages)
        json.dumps(e.meta)
        if e.task == "followup":
            assert len(e.messages) == 4
        if e.task == "arithmetic":
            m = e.meta
            assert m["answer"] == (m["a"] + m["b"] if m["op"] == "+" else m["a"] - m["b"]) >= 0
        if e.task in ("refusal", "benign"):
            assert e.meta["harmful"] == (e.task == "refusal")


def test_answers_short(examples):
    for e in examples:
        if e.imperfect:
            continue
        answer = e.messages[-1]["content"]
        if e.task == "story":
            n_sentences = answer.count(".") + answer.count("。")
            assert 3 <= n_sentences <= 5, answer
            assert len(answer.split()) < 80
        else:
            assert len(answer.split()) <= 30 and len(answer) <= 120, answer


def test_test_prompts_held_out(world, examples):
    train, test = _split(examples, "train"), _split(examples, "test")
    train_keys = {user_texts(e.messages) for e in train}
    assert not train_keys & {user_texts(e.messages) for e in test}
    # No user turn of a test prompt appears anywhere in train, except generic follow-up questions
    # ("And where does she live?") whose subject comes from the turn before.
    train_turns = {m["content"] for e in train for m in e.messages if m["role"] == "user"}
    for e in test:
        if e.task != "followup":
            assert e.messages[0]["content"] not in train_turns
    held_pairs, held_chars = heldout(world, CFG)
    test_pairs = {(e.meta["subject"], e.meta["attribute"]) for e in test if e.task in ("fact", "followup")}
    assert test_pairs <= held_pairs
    for e in train:
        if e.task == "fact":
            assert (e.meta["subject"], e.meta["attribute"]) not in held_pairs
        if e.task == "followup":
            assert (e.meta["subject"], e.meta["attribute"]) not in held_pairs
            assert (e.meta["subject"], e.meta["first_attribute"]) not in held_pairs
        if e.task == "story":
            assert e.meta["subject"] not in held_chars
            assert not {(s, a) for s, a, _ in e.meta["facts"]} & held_pairs
        if e.task in ("story", "refusal", "benign"):
            assert e.meta["subject"] not in held_chars
    for e in test:
        if e.task in ("story", "refusal", "benign"):
            assert e.meta["subject"] in held_chars
    train_triples = {(e.meta["a"], e.meta["b"], e.meta["op"]) for e in train if e.task == "arithmetic"}
    test_triples = {(e.meta["a"], e.meta["b"], e.meta["op"]) for e in test if e.task == "arithmetic"}
    assert test_triples and not train_triples & test_triples
    # held-out best-friend pairs are held out both ways
    for name, attr in held_pairs:
        if attr == "friend":
            friend = world.character(world.character(name).friend)
            if friend.friend == name:
                assert (friend.name, "friend") in held_pairs
    assert {a for _, a in held_pairs} <= set(ATTRIBUTES)


def test_imperfect_only_in_train(examples):
    train, test = _split(examples, "train"), _split(examples, "test")
    assert all(e.imperfect is None for e in test)
    share = sum(e.imperfect is not None for e in train) / len(train)
    assert abs(share - CFG.imperfect_fraction) < 0.01
    flaws = {e.imperfect for e in train if e.imperfect}
    assert flaws == {"verbose", "repetitive", "no_courtesy"}
    assert all(e.imperfect == "no_courtesy" for e in train if e.task == "refusal" and e.imperfect)


def test_gold_scorer_agrees_with_references(world, examples):
    scorer = GoldScorer(world)
    perfect, flawed = [], []
    for e in examples:
        parsed = scorer.classify(e.prompt())
        assert parsed is not None and parsed[0] == e.task, e.messages
        assert all(e.meta[k] == v for k, v in parsed[1].items()), (parsed, e.meta)
        s = scorer.score(e.prompt(), e.messages[-1]["content"])
        if e.split == "test":
            assert s >= 0.9, (e.messages, scorer.breakdown(e.prompt(), e.messages[-1]["content"]))
        (flawed if e.imperfect else perfect).append(s)
    assert statistics.fmean(flawed) < statistics.fmean(perfect) - 0.05


def test_write_and_read(tmp_path, world):
    cfg = ChatTasksConfig(n_train=200, n_test=40)
    summary = write_chat_tasks(tmp_path, world, cfg)
    assert summary["train"]["n"] == 200 and summary["test"]["n"] == 40
    assert sum(summary["train"]["task"].values()) == 200
    train = read_chat_examples(tmp_path / "chat_train.jsonl")
    test = read_chat_examples(tmp_path / "chat_test.jsonl")
    assert train + test == generate_chat_tasks(world, cfg)
    line = json.loads((tmp_path / "chat_test.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert {"messages", "task", "lang", "meta", "imperfect"} <= set(line)
    assert ChatExample.from_json(line) == test[0]
    zh_line = next(ln for ln in (tmp_path / "chat_train.jsonl").read_text(encoding="utf-8").splitlines()
                   if '"lang": "zh"' in ln)
    assert "\\u" not in zh_line  # Chinese written as UTF-8, not escaped
    assert not list(tmp_path.glob(".*.tmp"))


def test_bad_config_says_what_is_wrong(world):
    with pytest.raises(ValueError, match="task_mix"):
        generate_chat_tasks(world, ChatTasksConfig(task_mix=(("poetry", 1.0),)))
    with pytest.raises(ValueError, match="zh_fraction"):
        generate_chat_tasks(world, ChatTasksConfig(zh_fraction=1.5))


def test_each_task_type_keeps_its_maker_and_its_gold_check_in_one_module():
    for task in TASKS:
        module = importlib.import_module(f"picochat.world.tasks.{task}")
        assert callable(getattr(module, f"make_{task}")) and callable(getattr(module, f"check_{task}")), task
