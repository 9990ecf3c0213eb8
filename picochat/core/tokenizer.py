"""Byte-level BPE tokenizer, trained with Hugging Face `tokenizers`.

Design:
- Byte level (GPT-2 style): every UTF-8 string encodes, and `decode(encode(s)) == s` exactly.
  No normalizer, no prefix space, so whitespace, "\\r\\n" and combining marks survive.
- CJK ideographs and kana are split into one pre-token per character before byte-level BPE.
  Chinese has no spaces, so without this a whole phrase would become one pre-token and BPE
  would learn phrase-sized tokens. A character may still become one token (its 3 UTF-8 bytes),
  but a token never spans two CJK characters.
- Special tokens (`<|endoftext|>`, `<|im_start|>`, ...) are recognised only when the caller asks
  (`allow_special=True`). Text typed by a user that happens to contain "<|im_end|>" encodes as
  ordinary bytes, so a user cannot forge chat-template structure.
- The saved `tokenizer.json` is a standard `tokenizers` file, loadable by
  `transformers.PreTrainedTokenizerFast(tokenizer_file=...)`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

EOT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
RESERVED = tuple(f"<|reserved_{i}|>" for i in range(4))
# Ids 0..7 in this order; reserved slots let later features add tokens without changing ids.
SPECIAL_TOKENS = (EOT, IM_START, IM_END, PAD) + RESERVED
# What the code needs: documents end with EOT, chats are framed by IM_START/IM_END, batches pad
# with PAD. A tokenizer from elsewhere (a Hugging Face import) needs these, not the reserved ones.
REQUIRED_TOKENS = (EOT, IM_START, IM_END, PAD)

# One pre-token per character for: CJK Unified Ideographs (+ Extension A, compatibility
# ideographs, Extensions B..G in the supplementary planes), hiragana and katakana.
CJK_CHAR_PATTERN = (
    r"[\x{3040}-\x{30FF}\x{3400}-\x{4DBF}\x{4E00}-\x{9FFF}\x{F900}-\x{FAFF}"
    r"\x{20000}-\x{2FA1F}\x{30000}-\x{3134F}]"
)

TOKENIZER_FILE = "tokenizer.json"


# GPT-2's pre-tokenizer regex, the one `pre_tokenizers.ByteLevel(use_regex=True)` applies.
GPT2_SPLIT_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    r"""Digits one by one, GPT-2's regex, then one piece per CJK character, then bytes.

    The first two steps are llama.cpp's "refact" pre-tokenizer (`\p{N}`, then GPT-2's regex), so a
    GGUF export tokenizes exactly as picochat does: the CJK split comes last and only cuts inside
    GPT-2's pieces, and since no merge was ever learned across a CJK character's edge, BPE on
    llama.cpp's uncut piece gives the same tokens (`tests/test_gguf.py`). Tokenizers trained before
    this order (CJK split first) differ only on whitespace runs right before a CJK character; their
    tokenizer.json keeps their own order."""
    return pre_tokenizers.Sequence(
        [
            # One token per digit: a small model then learns column-wise arithmetic instead of
            # memorising which multi-digit chunks BPE happened to merge (as Llama and others do).
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Split(Regex(GPT2_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.Split(Regex(CJK_CHAR_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def llama_cpp_pre_tokenizer(tokenizer_json: str) -> str | None:
    """The llama.cpp pre-tokenizer name ("refact") that tokenizes exactly as this tokenizer.json,
    or None when its pre-tokenizer is another one (e.g. picochat's order before GGUF export)."""
    probe = HFTokenizer(models.BPE())  # a blank tokenizer with our pre-tokenizer, to serialise it
    probe.pre_tokenizer = _pre_tokenizer()
    expected = json.loads(probe.to_str())["pre_tokenizer"]
    return "refact" if json.loads(tokenizer_json).get("pre_tokenizer") == expected else None


class Tokenizer:
    """Thin wrapper over a `tokenizers.Tokenizer` with picochat's special tokens.

    Holds two copies of the same tokenizer: one that matches special tokens in text and one that
    treats them as plain text. Choosing a copy per call avoids flipping shared state, so
    concurrent calls with different `allow_special` values are safe.
    """

    def __init__(self, hf_tokenizer: HFTokenizer):
        json_str = hf_tokenizer.to_str()
        self._special = HFTokenizer.from_str(json_str)  # matches "<|im_end|>" -> im_end_id
        self._special.encode_special_tokens = False
        self._plain = HFTokenizer.from_str(json_str)  # "<|im_end|>" -> ordinary byte tokens
        self._plain.encode_special_tokens = True
        missing = [t for t in REQUIRED_TOKENS if self._special.token_to_id(t) is None]
        if missing:
            raise ValueError(
                f"tokenizer is missing picochat special tokens {missing}; "
                "train it with picochat.core.tokenizer.train_tokenizer (a Hugging Face model imported "
                "with init=hf:PATH gets them added)"
            )
        self.eot_id = self.token_id(EOT)
        self.im_start_id = self.token_id(IM_START)
        self.im_end_id = self.token_id(IM_END)
        self.pad_id = self.token_id(PAD)

    # ---- persistence -------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load from a tokenizer.json file or a directory containing one."""
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"no tokenizer at {path}; train one first (picochat.core.tokenizer.train_tokenizer)"
            )
        return cls(HFTokenizer.from_file(str(path)))

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write out_dir/tokenizer.json atomically (temp file + rename) and return its path."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        out_path = out_dir / TOKENIZER_FILE
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".tokenizer.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.to_json())
            os.replace(tmp, out_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return out_path

    def to_json(self) -> str:
        """The standard tokenizers JSON (special tokens matched, as transformers expects)."""
        return self._special.to_str(pretty=True)

    # ---- vocabulary --------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (ids are 0..vocab_size-1)."""
        return self._special.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        token_id = self._special.token_to_id(token)
        if token_id is None:
            raise KeyError(f"token {token!r} is not in the vocabulary (size {self.vocab_size})")
        return token_id

    # ---- encode / decode ---------------------------------------------------------------------

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Encode text. Special-token strings in `text` are plain text unless allow_special."""
        tok = self._special if allow_special else self._plain
        return tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], allow_special: bool = False) -> list[list[int]]:
        """Encode many texts in parallel (Rust threads); same rules as `encode`."""
        tok = self._special if allow_special else self._plain
        return [e.ids for e in tok.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self._special.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    show_progress: bool = True,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer from a stream of texts.

    `vocab_size` counts everything: the special tokens, the 256 byte tokens and the merges.
    """
    min_vocab = len(SPECIAL_TOKENS) + 256
    if vocab_size < min_vocab:
        raise ValueError(f"vocab_size must be >= {min_vocab} (specials + 256 bytes), got {vocab_size}")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = _pre_tokenizer()
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    length = len(texts) if hasattr(texts, "__len__") else None
    hf.train_from_iterator(iter(texts), trainer=trainer, length=length)
    return Tokenizer(hf)
