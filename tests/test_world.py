"""The built-in world: deterministic, facts consistent, every fact stated in EN and ZH, arithmetic correct."""

import json
import re

import pytest

from picochat.world import (
    ATTRIBUTES,
    World,
    WorldConfig,
    build_world,
    corpus,
    generate_corpus,
    iter_facts,
    read_world,
    vocab,
    write_world,
    zh,
)

SMALL = WorldConfig(seed=7, n_characters=12, n_places=5, corpus_mb=0.2)


@pytest.fixture(scope="module")
def small_docs():
    return list(generate_corpus(build_world(SMALL), SMALL))


def test_vocab_sizes_and_zh():
    assert len({n for n, _, _ in vocab.NAMES}) >= 200
    assert len({z for _, z, _ in vocab.NAMES}) == len(vocab.NAMES)
    for attr in ATTRIBUTES.values():
        if attr.values is not None:
            assert len(attr.values) >= 12, attr.name
            for v in attr.values:
                assert zh(v)
    assert zh("Mira") == "米拉" and zh("fox") == "狐狸" and zh(7) == "7"
    with pytest.raises(KeyError):
        zh("Atlantis")


def test_build_world_deterministic_and_consistent():
    cfg = WorldConfig(seed=3, n_characters=40, n_places=10)
    w = build_world(cfg)
    assert w == build_world(cfg)
    assert w != build_world(WorldConfig(seed=4, n_characters=40, n_places=10))
    names = [c.name for c in w.characters]
    assert len(set(names)) == 40
    place_names = {p.name for p in w.places}
    assert len(place_names) == 10
    assert all(w.residents(p) for p in place_names)  # every place has someone
    for c in w.characters:
        assert c.home in place_names
        assert c.friend != c.name
        assert w.character(c.friend).friend == c.name  # symmetric for an even count
        assert c.gender in ("female", "male")
        assert vocab.AGE_MIN <= c.age <= vocab.AGE_MAX
        assert w.character(c.name) is c
    facts = list(iter_facts(w))
    assert len(facts) == 40 * len(ATTRIBUTES)
    assert facts[0].subject == w.characters[0].name and facts[0].attribute == "species"


def test_odd_character_count_friend_exists():
    w = build_world(WorldConfig(seed=5, n_characters=7, n_places=3))
    for c in w.characters:
        assert w.character(c.friend).name != c.name


def test_world_json_round_trip():
    w = build_world(SMALL)
    assert World.from_dict(json.loads(json.dumps(w.to_dict(), ensure_ascii=False))) == w


def test_corpus_deterministic():
    a = list(generate_corpus(build_world(SMALL), SMALL))
    b = list(generate_corpus(build_world(SMALL), SMALL))
    assert a == b
    other = WorldConfig(seed=8, n_characters=12, n_places=5, corpus_mb=0.2)
    assert list(generate_corpus(build_world(other), other)) != a


def test_corpus_size_and_language_mix(small_docs):
    n_bytes = sum(len(d["text"].encode("utf-8")) for d in small_docs)
    assert 0.8 * SMALL.corpus_mb * 1e6 <= n_bytes <= 1.2 * SMALL.corpus_mb * 1e6
    zh_frac = sum(d["lang"] == "zh" for d in small_docs) / len(small_docs)
    assert abs(zh_frac - SMALL.zh_fraction) < 0.05
    arith_frac = sum(d["kind"] == "arithmetic" for d in small_docs) / len(small_docs)
    assert abs(arith_frac - SMALL.arithmetic_fraction) < 0.05
    kinds = {d["kind"] for d in small_docs}
    assert kinds >= {"bio", "card", "qa", "story", "dialogue", "place", "arithmetic"}


def test_chinese_has_no_spaces_between_cjk(small_docs):
    cjk_gap = re.compile(r"[\u4e00-\u9fff] +[\u4e00-\u9fff]")
    zh_docs = [d["text"] for d in small_docs if d["lang"] == "zh"]
    assert zh_docs and not any(cjk_gap.search(t) for t in zh_docs)
    assert all(re.search(r"[\u4e00-\u9fff]", t) for t in zh_docs)


def test_every_fact_stated_in_both_languages(small_docs):
    world = build_world(SMALL)
    en = [d["text"] for d in small_docs if d["lang"] == "en" and d["kind"] != "arithmetic"]
    zh_ = [d["text"] for d in small_docs if d["lang"] == "zh" and d["kind"] != "arithmetic"]
    for fact in iter_facts(world):
        c = world.character(fact.subject)
        value_en = str(fact.value)
        value_zh = f"{fact.value}岁" if fact.attribute == "age" else zh(fact.value)
        name_en = re.compile(rf"\b{c.name}\b")
        n_en = sum(bool(name_en.search(t)) and value_en in t for t in en)
        n_zh = sum(c.name_zh in t and value_zh in t for t in zh_)
        assert n_en >= 5, (fact, n_en)
        assert n_zh >= 1, (fact, n_zh)


def test_bios_and_cards_state_all_facts(small_docs):
    world = build_world(SMALL)
    for d in small_docs:
        if d["kind"] not in ("bio", "card"):
            continue
        lang = d["lang"]

        def states_all(c, lang=lang, d=d):
            name = c.name if lang == "en" else c.name_zh
            values = [str(getattr(c, a)) if lang == "en" else zh(getattr(c, a)) for a in ATTRIBUTES]
            return all(v in d["text"] for v in [name] + values)

        assert any(states_all(c) for c in world.characters), d["text"]


_SUB = ("-", "minus", "take away", "gives", "减", "给了", "剩")
_ADD = ("+", "plus", "sum", "add", "finds", "加", "和是", "又")


def test_arithmetic_lines_are_correct(small_docs):
    n_checked = 0
    for d in small_docs:
        if d["kind"] != "arithmetic":
            continue
        for line in d["text"].split("\n"):
            nums = [int(x) for x in re.findall(r"\d+", line)]
            if not nums:
                continue  # a header
            assert len(nums) == 3, line
            a, b, c = nums
            low = line.lower()
            if any(k in low for k in _SUB):
                assert a - b == c and c >= 0, line
            else:
                assert any(k in low for k in _ADD), line
                assert a + b == c, line
            assert a <= SMALL.max_operand and b <= SMALL.max_operand
            n_checked += 1
    assert n_checked > 100


def test_template_variety():
    for lang, n_min in (("en", 8), ("zh", 6)):
        for frames in (corpus.BIO_FRAMES, corpus.CARD_FRAMES, corpus.QA_FRAMES, corpus.STORY_OPENINGS,
                       corpus.DIALOGUE_FRAMES, corpus.PLACE_FRAMES):
            assert len(frames[lang]) >= n_min
        for lines in corpus.ARITH_LINES[lang].values():
            assert len(lines) >= n_min - 2
        for attr in ATTRIBUTES:
            assert len(corpus.FACT_TEMPLATES[lang][attr]) >= 3
            assert corpus.QUESTIONS[lang][attr]


def test_write_world(tmp_path):
    summary = write_world(tmp_path / "w", SMALL)
    lines = (tmp_path / "w" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    docs = [json.loads(line) for line in lines]
    assert summary["n_docs"] == len(docs) > 0
    assert summary["n_bytes"] == sum(len(d["text"].encode("utf-8")) for d in docs)
    assert summary["n_docs_zh"] == sum(d["lang"] == "zh" for d in docs)
    assert summary["n_docs_arithmetic"] == sum(d["kind"] == "arithmetic" for d in docs)
    assert summary["n_characters"] == SMALL.n_characters and summary["n_places"] == SMALL.n_places
    assert all(set(d) == {"text", "lang", "kind"} for d in docs)
    assert any(re.search(r"[\u4e00-\u9fff]", line) for line in lines)  # ensure_ascii=False
    world, cfg = read_world(tmp_path / "w")
    assert world == build_world(SMALL) and cfg == SMALL
    assert [p.name for p in (tmp_path / "w").iterdir()] and not list((tmp_path / "w").glob("*.tmp"))
    # same config -> byte-identical corpus
    write_world(tmp_path / "w2", SMALL)
    assert (tmp_path / "w2" / "corpus.jsonl").read_bytes() == (tmp_path / "w" / "corpus.jsonl").read_bytes()
