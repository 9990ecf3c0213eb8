"""Reading an answer out of generated text: GSM8K's final number, and the letter a chat reply chose.

GSM8K follows lm-evaluation-harness (tasks/gsm8k/gsm8k.yaml) so the scores compare: "strict"
takes the number after the first `#### `, "flexible" the last number-like run in the text, and
both sides of the exact match drop commas, dollar signs, anything up to `#### ` and one final
full stop, ignoring case. So "$1,200." reads as 1200, and "3/4" as 4: the harness has no
fractions (GSM8K's answers are integers), and we score as it does.
"""

from __future__ import annotations

import re

INVALID = "[invalid]"  # what the harness's regex filter returns when nothing matches
_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_IGNORED = (re.compile(","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$"))


def strict_answer(text: str) -> str:
    """The number after the first `#### `, as written (the harness's "strict-match" filter)."""
    match = _STRICT.search(text)
    return match.group(1) if match else INVALID


def flexible_answer(text: str) -> str:
    """The last number-like run of the text (the harness's "flexible-extract" filter)."""
    matches = _FLEXIBLE.findall(text)
    if not matches:
        return INVALID
    return next(group for group in matches[-1] if group)  # the alternative that matched


def normalise_answer(text: str) -> str:
    """Both sides of GSM8K's exact match: commas, `$`, a `#### ` prefix and one final `.` removed,
    lower case, surrounding spaces stripped."""
    for pattern in _IGNORED:
        text = pattern.sub("", text)
    return text.strip().lower()


def reference_answer(solution: str) -> str:
    """The normalised final answer of a GSM8K reference solution ("... #### 18" -> "18")."""
    return normalise_answer(solution.rsplit("####", 1)[-1])


def answer_matches(extracted: str, reference: str) -> bool:
    return extracted != INVALID and normalise_answer(extracted) == reference


def letters(n: int) -> str:
    return "ABCDEFGHIJKLMNOP"[:n]


def chosen_letter(reply: str, n_choices: int) -> int | None:
    """Which of `n_choices` lettered options a chat reply picked (index), or None if it names none.

    Accepts "B", "B.", "(b) ...", "The answer is C", "答案：D", "Answer: A) ...": first a letter
    that opens the reply, then one after "answer"/"答案", then the first letter standing alone."""
    valid = letters(n_choices)
    text = reply.strip()
    opening = re.match(r"^\(?([A-Za-z])(?![A-Za-z])", text)
    if opening and opening.group(1).upper() in valid:
        return valid.index(opening.group(1).upper())
    after_word = re.search(r"(?:answer|答案)\s*(?:is|:|：|为|是)?\s*\(?([A-Za-z])(?![A-Za-z])", text, re.IGNORECASE)
    if after_word and after_word.group(1).upper() in valid:
        return valid.index(after_word.group(1).upper())
    alone = re.search(rf"(?<![A-Za-z])([{valid}])(?![A-Za-z])", text)
    return valid.index(alone.group(1)) if alone else None
