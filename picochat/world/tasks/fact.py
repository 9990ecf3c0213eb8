"""fact: one question about one fact of a character, answered in one sentence.

    "What is Mira's favourite food?" -> "Mira's favourite food is plums."

The questions are the corpus's own (`corpus.QUESTIONS`) plus a few phrasings the corpus never
uses, sometimes inside a wrapper ("Quick question: ..."). The gold scorer parses prompts with these
same tables, so every prompt they can produce is recognised. {name} is the character's name; other
fields come from `templates.fields`.

Judged (`check_fact`, also used for follow-ups): the right value in a word-boundary match (EN or ZH
surface form); every *other* value of the same attribute divides the credit (listing candidates
scores low), each false statement about another attribute of a character in scope halves it, and
so does a negation ("not", "不是"). Answers state facts positively, so this costs a good answer
nothing.
"""

from __future__ import annotations

import random
import re

from picochat.world import vocab
from picochat.world.corpus import QUESTIONS
from picochat.world.entities import Character, World
from picochat.world.mentions import ValueFinder
from picochat.world.templates import fields, fill, refer
from picochat.world.text import INTEGER

_NEGATION = re.compile(r"\b(?:not|never|isn['’]t|doesn['’]t|don['’]t)\b|不是|不喜欢|不住|没有|从不", re.I)

FACT_QUESTIONS: dict[str, dict[str, list[str]]] = {
    lang: {attr: list(QUESTIONS[lang][attr]) + extra for attr, extra in extras.items()}
    for lang, extras in {
        "en": {
            "species": ["Can you tell me what kind of animal {name} is?"],
            "colour": ["What colour is {name}'s fur?"],
            "home": ["In which place does {name} live?"],
            "food": ["Which food does {name} like best?"],
            "friend": ["Who is {name} best friends with?"],
            "age": ["How many years old is {name}?"],
            "hobby": ["What is {name}'s favourite hobby?"],
            "job": ["What job does {name} have?"],
        },
        "zh": {
            "species": ["{name}是一种什么动物？"],
            "colour": ["{name}身上的毛是什么颜色的？"],
            "home": ["{name}家住在哪个地方？"],
            "food": ["{name}最爱吃的是什么？"],
            "friend": ["{name}和谁是最好的朋友？"],
            "age": ["{name}今年几岁？"],
            "hobby": ["{name}平时有什么爱好？"],
            "job": ["{name}做的是什么工作？"],
        },
    }.items()
}
# Optional framing around a question ({q}); the scorer searches for the question inside.
QUESTION_WRAPPERS: dict[str, list[str]] = {
    "en": ["Quick question: {q}", "Hi! {q}", "{q} Please answer in one sentence."],
    "zh": ["请问，{q}", "问一下：{q}", "{q}请用一句话回答。"],
}
# Good answers: {S}/{P} are the name (or pronoun) as subject/possessive, see templates.refer.
FACT_ANSWERS: dict[str, dict[str, list[str]]] = {
    "en": {
        "species": ["{S} is {a_species}."], "colour": ["{P} coat is {colour}.", "{S} has a {colour} coat."],
        "home": ["{S} lives in {home}."], "food": ["{P} favourite food is {food}.", "{S} loves {food} most of all."],
        "friend": ["{P} best friend is {friend}."], "age": ["{S} is {age} years old."],
        "hobby": ["{P} hobby is {hobby}.", "{S} loves {hobby}."], "job": ["{S} works as {a_job}.", "{S} is {a_job}."],
    },
    "zh": {
        "species": ["{S}是一{m}{species}。"], "colour": ["{P}毛是{colour}的。"], "home": ["{S}住在{home}。"],
        "food": ["{S}最喜欢吃{food}。", "{S}最爱的食物是{food}。"], "friend": ["{S}最好的朋友是{friend}。"],
        "age": ["{S}今年{age}岁。"], "hobby": ["{P}爱好是{hobby}。", "{S}喜欢{hobby}。"], "job": ["{S}是一名{job}。"],
    },
}


def fact_answer(c: Character, world: World, attr: str, lang: str, rng: random.Random,
                by_pronoun: bool = False) -> str:
    """A short, good answer stating `attr` of `c`."""
    f = refer(fields(c, world, lang), lang, by_pronoun)
    return fill(rng.choice(FACT_ANSWERS[lang][attr]), f)


def fact_question(c: Character, world: World, attr: str, lang: str, rng: random.Random) -> str:
    """A question asking for `attr` of `c`, sometimes inside a wrapper."""
    q = rng.choice(FACT_QUESTIONS[lang][attr]).format_map(fields(c, world, lang))
    if rng.random() < 0.3:
        q = rng.choice(QUESTION_WRAPPERS[lang]).format(q=q)
    return q


def fact_meta(c: Character, attr: str) -> dict:
    """The gold answer of a question about `attr` of `c` (what the scorer checks against)."""
    value = getattr(c, attr)
    return {"subject": c.name, "attribute": attr, "answer": value, "answer_zh": vocab.zh(value)}


def make_fact(c: Character, world: World, attr: str, lang: str, rng: random.Random):
    q = fact_question(c, world, attr, lang, rng)
    a = fact_answer(c, world, attr, lang, rng)
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}], fact_meta(c, attr)


def check_fact(values: ValueFinder, meta: dict, text: str, notes: list[str]) -> float:
    """Correctness in [0, 1] of an answer to a fact (or follow-up) question with gold `meta`; why
    points were lost goes to `notes`."""
    attr, gold, subject = meta["attribute"], meta["answer"], meta["subject"]
    if attr == "age":
        said = {int(m.group(0)) for m in INTEGER.finditer(text)}
    else:
        kind = "name" if attr == "friend" else attr
        said = {v for k, v, _ in values.mentions(text) if k == kind}
        if attr == "friend":
            said.discard(subject)
    if gold not in said:
        notes.append(f"{attr}: expected {gold!r}, found {sorted(map(str, said)) or 'nothing'}")
        return 0.0
    others = said - {gold}
    score = 1.0 / (1 + len(others))
    if others:
        notes.append(f"{attr}: also names {sorted(map(str, others))}")
    if _NEGATION.search(text):
        score *= 0.5
        notes.append("negated statement")
    false = {(k, str(v)) for k, v, ok in values.claims(text, {subject}) if not ok and k != attr}
    if false:
        notes.append(f"false statements: {sorted(false)}")
    return score * 0.5 ** len(false)
