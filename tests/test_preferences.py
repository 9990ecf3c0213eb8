import gzip
import json
from itertools import combinations
from pathlib import Path

import pytest

from picochat.data.preferences import (
    PreferenceError,
    append_record,
    parse_record,
    prompt_key,
    read_preferences,
    repair_torn_tail,
)
from picochat.data.readers import CorpusError

HH_FILE = (Path(__file__).resolve().parents[2] / "shared" / "data" / "preference"
           / "hh_rlhf_harmless_base_test.jsonl.gz")
USER = [{"role": "user", "content": "hi"}]


def kwise(**overrides):
    record = {"prompt": USER, "responses": ["a", "b", "c", "d"], "ranking": [2, [0, 3], 1]}
    record.update(overrides)
    return record


def write_jsonl(path: Path, lines) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
                    encoding="utf-8")
    return path


def test_kwise_ranking_with_ties_gives_all_untied_pairs():
    r = parse_record(kwise(meta={"labeler": "me"}, all_bad=True), "f.jsonl, line 1")
    assert r.kind == "ranking" and r.ranking == [[2], [0, 3], [1]]
    assert r.pairs() == [(2, 0), (2, 3), (2, 1), (0, 1), (3, 1)]
    assert len(r.pairs()) == len(list(combinations(range(4), 2))) - 1  # C(4,2) minus the tie
    assert r.meta == {"labeler": "me", "all_bad": True}
    assert parse_record(kwise(prompt="hi"), "w").prompt == USER  # a string is one user message


@pytest.mark.parametrize("record", [
    {"prompt": "hi", "chosen": "good", "rejected": "bad"},
    {"prompt": USER, "chosen": [{"role": "assistant", "content": "good"}],
     "rejected": [{"role": "assistant", "content": "bad"}]},
    {"chosen": USER + [{"role": "assistant", "content": "good"}],
     "rejected": USER + [{"role": "assistant", "content": "bad"}]},
    {"conversations": [{"from": "human", "value": "hi"}],
     "chosen": {"from": "gpt", "value": "good"}, "rejected": "bad"},
])
def test_pairwise_forms(record):
    r = parse_record(record, "w")
    assert (r.prompt, r.responses, r.ranking, r.pairs()) == (USER, ["good", "bad"], [[0], [1]],
                                                            [(0, 1)])


def test_hh_plain_text_multi_turn():
    history = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant:"
    r = parse_record({"chosen": history + " fine", "rejected": history + " go away"}, "w")
    assert [m["role"] for m in r.prompt] == ["user", "assistant", "user"]
    assert r.prompt[-1]["content"] == "how are you?" and r.responses == ["fine", "go away"]
    with pytest.raises(PreferenceError, match="w: .*differ"):
        parse_record({"chosen": history + " fine",
                      "rejected": "\n\nHuman: other\n\nAssistant: no"}, "w")


def test_scalar_forms():
    r = parse_record({"text": "great movie", "label": 1}, "w")
    assert (r.kind, r.prompt, r.responses, r.label, r.pairs()) == ("scalar", None, ["great movie"],
                                                                   1.0, [])
    r = parse_record({"messages": USER + [{"role": "assistant", "content": "yo"}], "label": 0.5},
                     "w")
    assert (r.prompt, r.responses, r.label) == (USER, ["yo"], 0.5)


@pytest.mark.parametrize("record", [
    kwise(), kwise(meta={"t": 1}, all_bad=False), {"text": "x", "label": -2.5, "id": 7},
    {"messages": USER + [{"role": "assistant", "content": "yo"}], "label": 1.0},
])
def test_to_json_round_trips(record):
    r = parse_record(record, "w")
    again = parse_record(json.loads(json.dumps(r.to_json())), "w")
    assert again == r and prompt_key(again.prompt) == prompt_key(r.prompt)


BAD = [
    ("{not json", "invalid JSON"),
    (kwise(ranking=[2, 0, 1]), "leaves out response"),
    (kwise(ranking=[2, 0, 3, 1, 0]), "twice"),
    (kwise(responses=["a"], ranking=[0]), "1 response"),
    (kwise(responses=list("abcdefghij"), ranking=list(range(10))), "10 response"),
    (kwise(responses=["a", 3, "c", "d"]), "response 1 must be a string"),
    (kwise(prompt=USER + [{"role": "assistant", "content": "x"}]), "must end with a user"),
    ({"text": "x", "label": "good"}, "'label' must be a finite number"),
    ({"foo": 1}, "unrecognised preference record"),
]


@pytest.mark.parametrize("bad,message", BAD)
def test_malformed_records_name_file_and_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "p.jsonl", [kwise(), "", bad, kwise()])
    with pytest.raises(PreferenceError, match=f"p.jsonl, line 3: .*{message}") as e:
        read_preferences(path)
    assert e.value.line == 3 and isinstance(e.value, CorpusError)
    records, problems = read_preferences(path, skip_invalid=True)
    assert len(records) == 2 and len(problems) == 1 and "p.jsonl, line 3: " in problems[0]


def test_file_without_valid_record_is_an_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(PreferenceError, match="empty.jsonl: no valid preference record"):
        read_preferences(empty, skip_invalid=True)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"foo": 1}])
    with pytest.raises(PreferenceError, match="bad.jsonl: no valid .*line 1"):
        read_preferences(bad, skip_invalid=True)


def test_directory_limit_and_gzip(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [kwise(), kwise(prompt="2")])
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps(kwise(prompt="3")) + "\n")
    records, _ = read_preferences(tmp_path)
    assert [r.prompt[0]["content"] for r in records] == ["hi", "2", "3"]
    assert records[2].source.endswith("b.jsonl.gz, line 1")
    assert len(read_preferences(tmp_path, limit=2)[0]) == 2


def test_append_and_repair_torn_tail(tmp_path):
    path = tmp_path / "labels.jsonl"
    append_record(path, parse_record(kwise(), "w"))
    append_record(path, {"prompt": "héllo", "chosen": "a", "rejected": "b"})
    assert "héllo" in path.read_text(encoding="utf-8")  # ensure_ascii=False
    assert repair_torn_tail(path) == 0
    torn = json.dumps(kwise()).encode()[:17]
    with open(path, "ab") as f:
        f.write(torn)
    assert repair_torn_tail(path) == len(torn)
    records, _ = read_preferences(path)
    assert [len(r.responses) for r in records] == [4, 2]
    append_record(path, kwise())
    assert len(read_preferences(path)[0]) == 3


@pytest.mark.skipif(not HH_FILE.exists(), reason="HH-RLHF sample not present")
def test_real_hh_rlhf_file():
    records, problems = read_preferences(HH_FILE, limit=50)
    assert len(records) == 50 and not problems
    for r in records:
        assert r.prompt and all(m["content"] for m in r.prompt) and all(r.responses)
        assert r.prompt[0]["role"] == "user" and r.prompt[-1]["role"] == "user"
        assert {m["role"] for m in r.prompt} <= {"user", "assistant"}
        assert "Human:" not in r.prompt[-1]["content"] and r.pairs() == [(0, 1)]
