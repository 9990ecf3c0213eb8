"""followup: a fact question and its answer, then a second question about the same character that
names it by pronoun only.

    "What is Mira's favourite food?" -> "Mira's favourite food is plums."
    "And where does she live?" -> "She lives in Ashford."

The scorer takes the subject from the nearest earlier turn that names a character, and judges the
answer like a fact answer (`check_followup` is `fact.check_fact`).
"""

from __future__ import annotations

import random

from picochat.world.entities import Character, World
from picochat.world.tasks.fact import check_fact, fact_answer, fact_meta, fact_question
from picochat.world.templates import fields

# Follow-up questions refer to the character of the previous turn by pronoun only.
FOLLOWUP_QUESTIONS: dict[str, dict[str, list[str]]] = {
    "en": {
        "species": ["And what kind of animal is {pn}?", "What animal is {pn}, by the way?"],
        "colour": ["And what colour is {pp} coat?"],
        "home": ["And where does {pn} live?", "Where is {pp} home?"],
        "food": ["And what is {pp} favourite food?", "What does {pn} like to eat most?"],
        "friend": ["And who is {pp} best friend?"],
        "age": ["And how old is {pn}?"],
        "hobby": ["And what is {pp} hobby?", "What does {pn} enjoy doing?"],
        "job": ["And what does {pn} do for a living?", "What is {pp} job?"],
    },
    "zh": {
        "species": ["那{ta}是什么动物？"],
        "colour": ["那{ta}的毛是什么颜色的？"],
        "home": ["那{ta}住在哪里？"],
        "food": ["{ta}最喜欢吃什么呢？", "那{ta}最爱的食物是什么？"],
        "friend": ["那{ta}最好的朋友是谁？"],
        "age": ["那{ta}几岁了？"],
        "hobby": ["那{ta}的爱好是什么？"],
        "job": ["那{ta}是做什么工作的？"],
    },
}


def make_followup(c: Character, world: World, first: str, attr: str, lang: str, rng: random.Random):
    q1 = fact_question(c, world, first, lang, rng)
    a1 = fact_answer(c, world, first, lang, rng)
    q2 = rng.choice(FOLLOWUP_QUESTIONS[lang][attr]).format_map(fields(c, world, lang))
    a2 = fact_answer(c, world, attr, lang, rng, by_pronoun=rng.random() < 0.7)
    messages = [{"role": "user", "content": q1}, {"role": "assistant", "content": a1},
                {"role": "user", "content": q2}, {"role": "assistant", "content": a2}]
    return messages, {**fact_meta(c, attr), "first_attribute": first}


check_followup = check_fact  # the answer states one fact of the subject, like a fact answer
