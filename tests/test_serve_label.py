"""The labeling page's memory (LabelStore): progress, answers kept across reloads and restarts,
no duplicate rankings, and records that the reward-model loader reads."""

import json

import pytest

from picochat.data.preferences import read_preferences
from picochat.data.readers import CorpusError
from picochat.serve.labeling import LabelStore, read_label_prompts
from picochat.train.reward import load_preference_splits

PROMPTS = [[{"role": "user", "content": "What is 2 + 3?"}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好"}]]


def test_read_label_prompts_formats_and_errors(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        json.dumps({"prompt": "What is 2 + 3?"}) + "\n\n"
        + json.dumps({"messages": PROMPTS[1] + [{"role": "assistant", "content": "a reference answer"}]}) + "\n",
        encoding="utf-8")
    assert read_label_prompts(path) == PROMPTS  # the reference answer after the last user turn is dropped
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad.jsonl, line 2: .*messages.*prompt"):
        read_label_prompts(bad)
    bad.write_text('{"messages": [{"role": "robot", "content": "x"}]}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"line 1: .*robot"):
        read_label_prompts(bad)


def test_answers_survive_a_restart_and_rankings_are_written_once(tmp_path):
    out = tmp_path / "label" / "human.jsonl"
    store = LabelStore(out, PROMPTS, k=3)
    assert store.progress() == {"labeled": 0, "total": 2}
    pid, messages, pending = store.next_prompt()
    assert messages == PROMPTS[0] and pending is None
    store.set_answers(pid, messages, ["5.", "6.", "2 + 3 = 5."], [True, True, False], {"model": "m"})
    # A second sampling of the same prompt (another tab) does not replace what is on screen.
    store.set_answers(pid, messages, ["x", "y", "z"], [True] * 3, {})

    restarted = LabelStore(out, PROMPTS, k=3)  # a server restart (or a page reload) shows the same answers
    pid2, _, pending = restarted.next_prompt()
    assert pid2 == pid and pending["responses"] == ["5.", "6.", "2 + 3 = 5."]

    with pytest.raises(Exception, match="leaves out response"):
        restarted.submit(pid, [0, 2], all_bad=False, labeler="ann")
    assert restarted.submit(pid, [[0, 2], 1], all_bad=False, labeler="ann") is True
    assert restarted.submit(pid, [[0, 2], 1], all_bad=False, labeler="ann") is False  # no duplicate
    with pytest.raises(KeyError):
        restarted.submit("unknown", [0, 1, 2], all_bad=False, labeler="ann")
    assert restarted.progress() == {"labeled": 1, "total": 2}
    assert restarted.next_prompt()[1] == PROMPTS[1]

    typed = [{"role": "user", "content": "Tell me a story."}]
    tid = restarted.add_typed(typed)
    restarted.set_answers(tid, typed, ["Once.", "No."], [True, True], {})
    assert restarted.next_prompt()[0] == tid  # the answers on screen come back first
    assert restarted.submit(tid, [1, 0], all_bad=True, labeler="bob")

    again = LabelStore(out, PROMPTS, k=3)  # done prompts stay done, typed ones stay counted
    assert again.progress() == {"labeled": 2, "total": 3}
    records, problems = read_preferences(out)
    assert problems == [] and len(records) == 2
    first, second = records
    assert first.prompt == PROMPTS[0] and first.ranking == [[0, 2], [1]]
    assert first.meta["labeler"] == "ann" and first.meta["finished"] == [True, True, False]
    assert first.meta["all_bad"] is False and "time" in first.meta
    assert second.meta["all_bad"] is True and second.ranking == [[1], [0]]
    train, held_out, _ = load_preference_splits(tmp_path, [str(out)], 0, 0.5)
    assert sorted(len(r.responses) for r in train + held_out) == [2, 3]


def test_the_labeling_page_finds_the_run_of_a_later_rounds_policy(tmp_path):
    """A later RLHF round's policy (<run>/rounds/round_2/ppo) serves the run's world prompts and
    saves people's rankings in the run, as the SFT model (<run>/sft) does."""
    from picochat.cli.serve import default_label_out, world_prompts_of_run

    run = tmp_path / "run"
    (run / "world").mkdir(parents=True)
    (run / "world" / "chat_train.jsonl").write_text("")
    (run / "config.yaml").write_text("preset: tiny\n")
    for ckpt in (run / "sft", run / "rounds" / "round_2" / "ppo"):
        ckpt.mkdir(parents=True)
        assert world_prompts_of_run(ckpt) == run / "world"
        assert default_label_out(ckpt) == run / "human_labels" / "preferences.jsonl"
    elsewhere = tmp_path / "model"
    elsewhere.mkdir()
    assert world_prompts_of_run(elsewhere) is None
    assert default_label_out(elsewhere).name == "human_preferences.jsonl"


def test_the_labeling_page_draws_the_world_prompts_as_the_runs_label_stage(tmp_path):
    from picochat.cli.serve import run_task_mix

    run = tmp_path / "run"
    run.mkdir()
    assert run_task_mix(run) == "natural"  # no config.yaml
    (run / "config.yaml").write_text("label:\n  task_mix: even\n")
    assert run_task_mix(run) == "even"
    (run / "config.yaml").write_text("label:\n  k: 8\n")
    assert run_task_mix(run) == "natural"
    (run / "config.yaml").write_text("label: [broken\n")
    assert run_task_mix(run) == "natural"
