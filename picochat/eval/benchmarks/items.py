"""What a benchmark item is once read: a multiple-choice question or a question with a numeric answer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question, in the harness's terms: `query` is doc_to_text (the question
    as the model reads it, without few-shot examples), `choices` the continuations scored after
    `target_delimiter`, `gold` the index of the correct one. `question` and `options` are the
    plain question and answer texts, for the chat form (where the choices are letters)."""

    task: str
    item_id: str
    query: str
    choices: tuple[str, ...]
    gold: int
    question: str
    options: tuple[str, ...]

    @property
    def chance(self) -> float:
        return 1.0 / len(self.choices)


@dataclass(frozen=True)
class GenerationItem:
    """One question answered by generation (GSM8K): the harness's `query`, the reference solution
    `target` (its few-shot text) and the `answer` it ends with, as a normalised number string."""

    task: str
    item_id: str
    query: str
    target: str
    answer: str
    question: str

    chance = 0.0
