"""Measures of a response's text that do not depend on the world: script, sentences, length,
repetition. The gold scorer and the task checks use them; so does the report (which language a
prompt is in).
"""

from __future__ import annotations

import re

CJK = re.compile(r"[\u3400-\u9fff]")  # a Chinese character
SENTENCE_END = re.compile(r"(?<=[.!?。！？；;])\s*|\n+")  # split on this to get sentences (EN and ZH)
INTEGER = re.compile(r"(?<![\d.])\d+(?![\d])")  # a whole number (not digits after a decimal point)
_LETTER = re.compile(r"[A-Za-z]")
_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?")
_TOKEN = re.compile(r"[A-Za-z0-9]+|[\u3400-\u9fff]")


def wrong_language(text: str, lang: str) -> bool:
    """True when text is clearly in the other language (bare numbers and symbols are neither)."""
    n_cjk, n_letters = len(CJK.findall(text)), len(_LETTER.findall(text))
    if lang == "zh":
        return n_cjk == 0 and n_letters >= 2
    return n_cjk >= 2 and n_cjk > n_letters


def length_units(text: str) -> float:
    """Length in English-word units: words and numbers, plus CJK characters / 1.5."""
    return len(_WORD.findall(text)) + len(CJK.findall(text)) / 1.5


def repetition(text: str, n: int = 4) -> float:
    """1 minus the excess share of repeated n-grams, and at most 1/copies when a sentence is repeated."""
    tokens = [t.lower() for t in _TOKEN.findall(text)]
    score = 1.0
    if len(tokens) > n:
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        dup = 1 - len(set(grams)) / len(grams)
        score = min(1.0, max(0.0, 1 - max(0.0, dup - 0.1) / 0.5))
    counts: dict[tuple, int] = {}
    for s in SENTENCE_END.split(text):
        toks = tuple(t.lower() for t in _TOKEN.findall(s))
        if len(toks) >= 3:
            counts[toks] = counts.get(toks, 0) + 1
    copies = max(counts.values(), default=1)
    return min(score, 1.0 / copies)
