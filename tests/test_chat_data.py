"""Chat dataset reader tests: the three record forms, errors that name file and line, real data."""

import gzip
import json
from pathlib import Path

import pytest

from picochat.core.chat import ChatFormatError
from picochat.data.chat_data import iter_conversations
from picochat.data.readers import CorpusError

REAL_SFT = Path(__file__).resolve().parents[2] / "shared" / "data" / "sft_en" / "llamafactory_alpaca_en_demo.jsonl.gz"


def write_jsonl(path: Path, lines: list) -> Path:
    text = "".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_three_record_forms(tmp_path):
    path = write_jsonl(tmp_path / "mix.jsonl.gz", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
         "task": "greet", "meta": {"id": 1}},
        "",
        {"instruction": "Translate", "input": "你好", "output": "Hello", "system": "Be brief."},
        {"instruction": "Say hi", "input": "", "output": "Hi!"},
        {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "问"},
                           {"from": "gpt", "value": "答"}, {"from": "human", "value": "再问"},
                           {"from": "gpt", "value": "再答"}]},
    ])
    convs = list(iter_conversations(path))
    assert convs == [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Translate\n\n你好"},
         {"role": "assistant", "content": "Hello"}],
        [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}],
        [{"role": "system", "content": "S"}, {"role": "user", "content": "问"},
         {"role": "assistant", "content": "答"}, {"role": "user", "content": "再问"},
         {"role": "assistant", "content": "再答"}],
    ]
    assert len(list(iter_conversations(path, limit=2))) == 2


def test_directory_is_read_in_sorted_order(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [{"instruction": "b", "output": "B"}])
    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "a", "output": "A"}])
    (tmp_path / "notes.txt").write_text("ignored", encoding="utf-8")
    assert [c[0]["content"] for c in iter_conversations(tmp_path)] == ["a", "b"]


def test_malformed_json_names_file_and_line(tmp_path):
    good = {"instruction": "x", "output": "y"}
    path = write_jsonl(tmp_path / "data.jsonl", [good, good, '{"instruction": "x", "output": '])
    with pytest.raises(CorpusError, match=r"data\.jsonl, line 3: invalid JSON"):
        list(iter_conversations(path))


def test_record_errors_name_the_line(tmp_path):
    cases = [
        ({"messages": [{"role": "user", "content": "only a question"}]}, ChatFormatError, "no assistant message"),
        ({"messages": [{"role": "bot", "content": "x"}]}, ChatFormatError, "message 1 has role 'bot'"),
        ({"conversations": [{"from": "alien", "value": "x"}]}, CorpusError, "from 'alien'"),
        ({"instruction": "x"}, CorpusError, "no 'output'"),
        ({"text": "plain"}, CorpusError, "unrecognised chat record"),
        ([1, 2], CorpusError, "expected a JSON object"),
    ]
    for record, error, pattern in cases:
        path = write_jsonl(tmp_path / "bad.jsonl", ["", record])
        with pytest.raises(error, match=rf"bad\.jsonl, line 2: .*{pattern}"):
            list(iter_conversations(path))


def test_empty_and_missing_inputs(tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(CorpusError, match="no conversations"):
        list(iter_conversations(empty))
    with pytest.raises(CorpusError, match="no such file"):
        list(iter_conversations(tmp_path / "missing.jsonl"))
    (tmp_path / "data.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="unsupported file type"):
        list(iter_conversations(tmp_path / "data.csv"))


@pytest.mark.skipif(not REAL_SFT.exists(), reason="shared SFT data not present")
def test_real_alpaca_demo():
    convs = list(iter_conversations(REAL_SFT, limit=20))
    assert len(convs) == 20
    for conv in convs:
        assert [m["role"] for m in conv] == ["user", "assistant"]
        assert conv[0]["content"].strip() and conv[1]["content"].strip()
