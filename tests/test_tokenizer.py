"""Tokenizer: exact round-trip, special-token safety, CJK splitting, save/load."""

import json
import random
import threading

import pytest

from picochat.core.tokenizer import SPECIAL_TOKENS, Tokenizer, train_tokenizer

EN_WORDS = ("the cat sat on a mat and the dog ran to the park while it was raining "
            "hello world assistant user answer question because therefore").split()
ZH_CHARS = "我们今天去公园玩天气很好你好世界中文分词测试的是在了有人这个大学"


def make_corpus(n_lines: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        if i % 3 == 0:
            lines.append("".join(rng.choice(ZH_CHARS) for _ in range(rng.randint(5, 20))) + "。")
        else:
            words = [rng.choice(EN_WORDS) for _ in range(rng.randint(4, 12))]
            lines.append(" ".join(words).capitalize() + ".")
    return lines


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(make_corpus(), vocab_size=500, show_progress=False)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable char map (what ByteLevel uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


ROUND_TRIP = [
    "Hello, world! The cat sat on the mat.",
    "我们今天去公园玩，天气很好。",
    "emoji 😀👍🏽🇨🇳 family 👨‍👩‍👧 end",
    "tabs\tand  double  spaces\n\nnew\r\nlines\r\n",
    "   leading spaces and trailing   ",
    "combining: e\u0301 a\u0308 n\u0303 \u0915\u094d\u0937",
    "<|im_end|> <|endoftext|><|im_start|>user\n<|pad|>",
    "mixed 中文 and English 混合 text 123 456.789",
    "",
    "\x00\x01 control \x7f bytes",
    "𠀀𪚥 rare CJK extension B",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text, allow_special=True)) == text


def test_specials_have_fixed_ids(tok):
    assert [tok.token_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert (tok.eot_id, tok.im_start_id, tok.im_end_id, tok.pad_id) == (0, 1, 2, 3)
    assert tok.vocab_size <= 500
    assert tok.vocab_size > len(SPECIAL_TOKENS) + 256  # learned some merges
    with pytest.raises(KeyError, match="not in the vocabulary"):
        tok.token_id("<|nope|>")


def test_special_tokens_only_when_allowed(tok):
    plain = tok.encode("<|im_end|>")
    assert tok.im_end_id not in plain and len(plain) > 1
    assert tok.encode("<|im_end|>", allow_special=True) == [tok.im_end_id]
    assert tok.encode_batch(["<|im_end|>"]) == [plain]
    assert tok.encode_batch(["<|im_end|>"], allow_special=True) == [[tok.im_end_id]]
    # encoding with allow_special must not leak into later plain calls
    assert tok.encode("<|im_end|>") == plain
    ids = [tok.im_start_id] + tok.encode("hi") + [tok.im_end_id]
    assert tok.decode(ids, skip_special=True) == "hi"
    assert tok.decode(ids) == "<|im_start|>hi<|im_end|>"


def test_concurrent_plain_and_special_encodes(tok):
    errors = []

    def worker(allow: bool):
        want = [tok.im_end_id] if allow else tok.encode("<|im_end|>")
        for _ in range(200):
            if tok.encode("<|im_end|>", allow_special=allow) != want:
                errors.append(allow)

    threads = [threading.Thread(target=worker, args=(i % 2 == 0,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_all_bytes_in_vocab(tok):
    vocab_chars = set(bytes_to_unicode().values())
    for ch in vocab_chars:
        tok.token_id(ch)  # raises if a byte token is missing


def test_cjk_never_merged_across_characters(tok):
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    id_to_bytes = {}
    text = "".join(make_corpus(60, seed=1))
    ids = tok.encode(text)
    merged_whole_char = False
    id_to_piece = {i: p for p, i in json.loads(tok.to_json())["model"]["vocab"].items()}
    for i in set(ids):
        piece = id_to_piece[i]
        raw = bytes(byte_of[c] for c in piece)
        id_to_bytes[i] = raw
        decoded = raw.decode("utf-8", errors="ignore")
        n_cjk = sum("\u4e00" <= c <= "\u9fff" for c in decoded)
        assert n_cjk <= 1, f"token {piece!r} spans {n_cjk} CJK chars: {decoded!r}"
        if n_cjk == 1 and len(raw) == 3:
            merged_whole_char = True
    assert merged_whole_char, "frequent Chinese characters should become single tokens"
    assert b"".join(id_to_bytes[i] for i in ids).decode("utf-8") == text


def test_save_load_identical(tok, tmp_path):
    path = tok.save(tmp_path / "tok")
    assert path.name == "tokenizer.json" and path.is_file()
    assert not list(path.parent.glob("*.tmp"))
    for loaded in (Tokenizer.load(path.parent), Tokenizer.load(path)):
        assert loaded.vocab_size == tok.vocab_size
        for text in ROUND_TRIP:
            assert loaded.encode(text) == tok.encode(text)
            assert loaded.encode(text, allow_special=True) == tok.encode(text, allow_special=True)
        assert loaded.encode_batch(ROUND_TRIP) == tok.encode_batch(ROUND_TRIP)
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        Tokenizer.load(tmp_path / "missing")


def test_vocab_size_too_small():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["abc"], vocab_size=100, show_progress=False)


def test_train_from_generator():
    gen = (line for line in make_corpus(50))
    t = train_tokenizer(gen, vocab_size=300, show_progress=False)
    assert t.decode(t.encode("the cat 我们")) == "the cat 我们"
