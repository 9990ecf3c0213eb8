"""Corpus readers and token shards."""

import gzip
import json
import os
import random

import numpy as np
import pytest

from picochat.core.tokenizer import train_tokenizer
from picochat.data.readers import CorpusError, find_corpus_files, iter_corpus, iter_documents
from picochat.data.shards import build_shards, is_val_document, load_shards

WORDS = "the a cat dog sat ran park sun rain big small happy 我们 今天 公园 天气 很好 你好".split()


def make_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10)))
                 for _ in range(rng.randint(1, 3))]
        docs.append(f"doc {i}: " + "\n".join(lines))
    return docs


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(make_docs(200), vocab_size=400, show_progress=False)


def write_jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: d}) + "\n" for d in docs), encoding="utf-8")
    return path


# ---- readers ---------------------------------------------------------------------------------


def test_jsonl_reads_and_skips_blank_lines(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"text": "one"}\n\n  \n{"text": "two", "id": 3}\n', encoding="utf-8")
    assert list(iter_documents(p)) == ["one", "two"]


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "one"}\n{"text": "two"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(CorpusError) as e:
        list(iter_documents(p))
    msg = str(e.value)
    assert "bad.jsonl" in msg and "line 3" in msg and "invalid JSON" in msg
    assert e.value.line == 3


@pytest.mark.parametrize("line, expected", [
    ('{"content": "x"}', "missing field 'text'"),
    ('{"text": 5}', "must be a string"),
    ('["text"]', "expected a JSON object"),
    ('{"text": "\\ud800"}', "surrogate"),
])
def test_jsonl_bad_records(tmp_path, line, expected):
    p = tmp_path / "r.jsonl"
    p.write_text('{"text": "ok"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=expected) as e:
        list(iter_documents(p))
    assert "line 2" in str(e.value) and "r.jsonl" in str(e.value)


def test_custom_text_field(tmp_path):
    p = write_jsonl(tmp_path / "c.jsonl", ["hi", "there"], field="content")
    assert list(iter_documents(p, text_field="content")) == ["hi", "there"]


def test_json_array_file(tmp_path):
    p = tmp_path / "arr.json"
    p.write_text(json.dumps([{"text": "a"}, {"text": "b"}]), encoding="utf-8")
    assert list(iter_documents(p)) == ["a", "b"]


def test_invalid_utf8_names_line(tmp_path):
    p = tmp_path / "u.txt"
    p.write_bytes(b"fine line\nalso fine\nbad \xff\xfe byte\n")
    with pytest.raises(CorpusError, match="invalid UTF-8") as e:
        list(iter_documents(p))
    assert "line 3" in str(e.value) and "u.txt" in str(e.value)


def test_txt_paragraphs(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes("\ufefffirst para\r\nstill first\r\n\r\n\n  \nsecond\n<|endoftext|>\n"
                  "third\tdoc  \n".encode("utf-8"))
    assert list(iter_documents(p)) == ["first para\r\nstill first", "second", "third\tdoc  "]


def test_gzip_variants(tmp_path):
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write('{"text": "zipped json"}\n')
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("zipped\ntext\n\nsecond\n")
    assert list(iter_documents(tmp_path / "a.jsonl.gz")) == ["zipped json"]
    assert list(iter_documents(tmp_path / "b.txt.gz")) == ["zipped\ntext", "second"]
    (tmp_path / "broken.txt.gz").write_bytes(b"not gzip at all")
    with pytest.raises(CorpusError, match="broken.txt.gz"):
        list(iter_documents(tmp_path / "broken.txt.gz"))


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["alpha", "beta", "gamma"], "n": [1, 2, 3]}), p,
                   row_group_size=2)
    assert list(iter_documents(p)) == ["alpha", "beta", "gamma"]
    with pytest.raises(CorpusError, match="no column 'body'"):
        list(iter_documents(p, text_field="body"))
    pq.write_table(pa.table({"text": ["a", None]}), tmp_path / "null.parquet")
    with pytest.raises(CorpusError, match="row 2"):
        list(iter_documents(tmp_path / "null.parquet"))


def test_directory_recursive_sorted(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    write_jsonl(d / "b.jsonl", ["b"])
    (d / "a.txt").write_text("a\n", encoding="utf-8")
    write_jsonl(d / "sub" / "c.jsonl", ["c"])
    (d / "README.md").write_text("not corpus", encoding="utf-8")
    (d / ".hidden.txt").write_text("hidden", encoding="utf-8")
    (d / "tokenizer.json").write_text('{"version": "1.0"}', encoding="utf-8")  # not corpus
    (d / "empty.txt").write_text("", encoding="utf-8")  # empty file inside a dir is fine
    assert list(iter_documents(d)) == ["a", "b", "c"]
    assert [p.name for p in find_corpus_files(d)] == ["a.txt", "b.jsonl", "empty.txt", "c.jsonl"]
    assert list(iter_corpus([d / "sub", d / "a.txt"])) == ["c", "a"]


def test_errors_for_missing_empty_unsupported(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        list(iter_documents(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="empty.jsonl.*no documents"):
        list(iter_documents(tmp_path / "empty.jsonl"))
    (tmp_path / "x.csv").write_text("a,b", encoding="utf-8")
    with pytest.raises(CorpusError, match="unsupported"):
        list(iter_documents(tmp_path / "x.csv"))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(CorpusError, match="emptydir"):
        list(iter_documents(tmp_path / "emptydir"))


# ---- shards ----------------------------------------------------------------------------------


def test_build_shards_counts_split_and_decode(tok, tmp_path):
    docs = make_docs(120, seed=3)
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    meta = build_shards([src], tok, tmp_path / "shards", val_fraction=0.2, batch_docs=16,
                        show_progress=False)
    train, val, loaded = load_shards(tmp_path / "shards")
    assert loaded == meta
    assert meta.dtype == "uint16" and train.dtype == np.uint16 and val.dtype == np.uint16
    assert isinstance(train, np.memmap) and not train.flags.writeable

    val_docs = [d for d in docs if is_val_document(d, 0.2)]
    train_docs = [d for d in docs if not is_val_document(d, 0.2)]
    assert val_docs and train_docs and meta.n_val_docs == len(val_docs)
    assert meta.n_docs == len(docs)
    expect_train = sum(len(tok.encode(d)) + 1 for d in train_docs)
    expect_val = sum(len(tok.encode(d)) + 1 for d in val_docs)
    assert (meta.n_train_tokens, meta.n_val_tokens) == (expect_train, expect_val)
    assert (len(train), len(val)) == (expect_train, expect_val)
    assert meta.n_train_bytes == sum(len(d.encode()) for d in train_docs)
    assert meta.n_val_bytes == sum(len(d.encode()) for d in val_docs)

    # Decoding the shard reproduces the documents, each followed by <|endoftext|>.
    eot = "<|endoftext|>"
    assert tok.decode(train.tolist()) == "".join(d + eot for d in train_docs)
    assert tok.decode(val.tolist()) == "".join(d + eot for d in val_docs)
    assert set(tok.decode(val.tolist()).split(eot)).isdisjoint(train_docs)
    assert sorted(os.listdir(tmp_path / "shards")) == ["meta.json", "train.bin", "val.bin"]


def test_build_shards_reuses_matching_build(tok, tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(30))
    out = tmp_path / "shards"
    meta1 = build_shards([src], tok, out, show_progress=False)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    import picochat.data.shards as shards_mod

    def boom(*a, **k):
        raise AssertionError("should not re-read the corpus")

    monkeypatch.setattr(shards_mod, "iter_corpus", boom)
    assert build_shards([src], tok, out, show_progress=False) == meta1
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    monkeypatch.undo()

    # Changing a setting (or the corpus) rebuilds.
    meta3 = build_shards([src], tok, out, val_fraction=0.3, show_progress=False)
    assert meta3.fingerprint != meta1.fingerprint
    write_jsonl(src, make_docs(31))
    os.utime(src, ns=(1, 1))  # make sure mtime and size differ
    meta4 = build_shards([src], tok, out, val_fraction=0.3, show_progress=False)
    assert meta4.n_docs == 31


def test_tiny_corpus_still_has_val(tok, tmp_path):
    src = write_jsonl(tmp_path / "two.jsonl", ["first doc", "second doc"])
    meta = build_shards([src], tok, tmp_path / "s", val_fraction=0.01, show_progress=False)
    train, val, _ = load_shards(tmp_path / "s")
    assert meta.n_val_docs == 1 and meta.n_docs == 2
    assert tok.decode(train.tolist()) + tok.decode(val.tolist()) in (
        "first doc<|endoftext|>second doc<|endoftext|>",
        "second doc<|endoftext|>first doc<|endoftext|>",
    )
    one = write_jsonl(tmp_path / "one.jsonl", ["only doc"])
    build_shards([one], tok, tmp_path / "s1", val_fraction=0.01, show_progress=False)
    train, val, meta = load_shards(tmp_path / "s1")
    assert meta.n_val_tokens == 0 and len(val) == 0 and len(train) == meta.n_train_tokens


def test_build_shards_propagates_corpus_error(tok, tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok"}\nnot json\n', encoding="utf-8")
    with pytest.raises(CorpusError, match="line 2"):
        build_shards([p], tok, tmp_path / "s", show_progress=False)
    assert os.listdir(tmp_path / "s") == []  # no meta, no leftover temp files
    with pytest.raises(FileNotFoundError, match="build_shards"):
        load_shards(tmp_path / "s")


def test_shards_inside_corpus_dir_are_not_read(tok, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_jsonl(corpus / "docs.jsonl", make_docs(20))
    meta1 = build_shards([corpus], tok, corpus / "shards", show_progress=False)
    (corpus / "shards" / "notes.txt").write_text("stray text inside the output dir\n")
    meta2 = build_shards([corpus], tok, corpus / "shards", show_progress=False)
    assert meta2 == meta1  # own output (and files in it) excluded from corpus and fingerprint
