"""story: a short story about a character, 3-5 sentences, every fact in them true.

    "Tell me a short story about Mira." -> "Once upon a time, Mira the red fox lived in Ashford. ..."

A story is an opening, one to three middle sentences (about the character alone, or introducing the
best friend first and then telling about either of them) and an ending, each sentence tagged with
the facts it states so that a train story never tells a held-out fact.

Judged (`check_story`): the character is named (else 0); 0.4, +0.3 per true fact up to two; every
world value in a sentence must belong to a character named in that sentence (or in the last
sentence that named someone), each false one halves the credit.
"""

from __future__ import annotations

import random

from picochat.world.entities import Character, World
from picochat.world.mentions import ValueFinder
from picochat.world.templates import fill, join_sentences, prefixed

STORY_PROMPTS: dict[str, list[str]] = {
    "en": ["Tell me a short story about {name}.", "Write a little story about {name}.",
           "Can you tell me a story about {name}?", "I'd love a short story about {name}, please."],
    "zh": ["给我讲一个关于{name}的小故事。", "写一个关于{name}的短故事吧。", "能讲个{name}的故事吗？"],
}
# Story sentences: (template, who, attributes it states). Fields: A_* the character, B_* the best
# friend. Every world value in a sentence belongs to a character named in that same sentence, which
# is what the gold scorer checks.
STORY_OPENINGS: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {
    "en": [("Once upon a time, {A} the {A_colour} {A_species} lived in {A_home}.", "A", ("colour", "species", "home")),
           ("{A} is {A_a_colour} {A_species} from {A_home}.", "A", ("colour", "species", "home")),
           ("In {A_home}, there lived {A_a_species} named {A}.", "A", ("species", "home")),
           ("{A} the {A_species} woke up early one morning.", "A", ("species",)),
           ("One sunny day, {A} stepped out of {A_pp} house in {A_home}.", "A", ("home",)),
           ("This is a story about {A}.", "A", ())],
    "zh": [("从前，{A_home}住着一{A_m}{A_colour}的{A_species}，名叫{A}。", "A", ("colour", "species", "home")),
           ("{A}是一{A_m}住在{A_home}的{A_species}。", "A", ("species", "home")),
           ("{A}这{A_m}{A_species}一大早就起床了。", "A", ("species",)),
           ("一个晴朗的早晨，{A}走出了{A_ta}在{A_home}的家。", "A", ("home",)),
           ("这是一个关于{A}的故事。", "A", ())],
}
STORY_MIDDLES: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {
    "en": [("{A} went to visit {A_pp} best friend, {B}.", "A", ("friend",)),
           ("{A} packed some {A_food}, {A_pp} favourite food.", "A", ("food",)),
           ("{A} spent the afternoon {A_hobby}.", "A", ("hobby",)),
           ("{A} works as {A_a_job}, so {A_pn} had a busy morning.", "A", ("job",)),
           ("{A} is {A_age} years old and full of energy.", "A", ("age",)),
           ("{B}, who loves {B_hobby}, came along too.", "B", ("hobby",)),
           ("{B} brought some {B_food} to share.", "B", ("food",)),
           ("{B} the {B_species} laughed and joined in.", "B", ("species",))],
    "zh": [("{A}去看望{A_ta}最好的朋友{B}。", "A", ("friend",)),
           ("{A}带上了{A_food}，那是{A_ta}最喜欢的食物。", "A", ("food",)),
           ("{A}整个下午都在{A_hobby}。", "A", ("hobby",)),
           ("{A}是一名{A_job}，所以早上很忙。", "A", ("job",)),
           ("{A}今年{A_age}岁，总是精力充沛。", "A", ("age",)),
           ("喜欢{B_hobby}的{B}也一起来了。", "B", ("hobby",)),
           ("{B}带来了{B_food}和大家分享。", "B", ("food",)),
           ("{B}这{B_m}{B_species}笑着加入了他们。", "B", ("species",))],
}
STORY_ENDINGS: dict[str, list[str]] = {
    "en": ["They had a wonderful day together.", "It was a happy day.", "The end.", "{A} smiled all the way back."],
    "zh": ["他们度过了快乐的一天。", "这真是美好的一天。", "故事讲完了。", "{A}一路笑着回去了。"],
}


def make_story(c: Character, world: World, lang: str, rng: random.Random, allowed=lambda name, attr: True):
    """3-5 sentences about c (and their best friend when that fact may be told), each fact true.
    `allowed(name, attr)` says which facts may be stated (train stories skip held-out facts)."""
    friend = world.character(c.friend)
    with_friend = allowed(c.name, "friend")
    f = {**prefixed(c, world, lang, "A"), **prefixed(friend, world, lang, "B")}
    who = {"A": c, "B": friend}

    def ok(entry) -> bool:
        _, w, attrs = entry
        return (w == "A" or with_friend) and all(allowed(who[w].name, a) for a in attrs)

    openings = [e for e in STORY_OPENINGS[lang] if ok(e)]
    middles = [e for e in STORY_MIDDLES[lang] if ok(e)]
    intro = [e for e in middles if e[2] == ("friend",)]
    for _ in range(20):  # redraw until the story tells at least two facts (when two may be told)
        opening = rng.choice(openings)
        k = rng.randint(1, 3)
        if intro and rng.random() < 0.6:  # the friendship first, then anything about either of them
            others = [e for e in middles if e not in intro]
            chosen = intro + rng.sample(others, min(len(others), k - 1))
        else:  # a story about c alone
            alone = [e for e in middles if e[1] == "A" and e not in intro]
            chosen = rng.sample(alone, min(len(alone), k))
        if sum(len(e[2]) for e in [opening] + chosen) >= 2:
            break
    chosen.sort(key=lambda e: (e[1] == "B", e[2] != ("friend",)))  # c's sentences, the intro, the friend's
    parts = [opening] + chosen
    sentences = [fill(t, f) for t, _, _ in parts]
    sentences.append(fill(rng.choice(STORY_ENDINGS[lang]), f))
    facts = [[who[w].name, a, getattr(who[w], a)] for _, w, attrs in parts for a in attrs]
    text = join_sentences(sentences, lang)
    prompt = rng.choice(STORY_PROMPTS[lang]).format(name=f["A"])
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}], \
        {"subject": c.name, "friend": c.friend, "facts": facts}


def check_story(values: ValueFinder, meta: dict, text: str, notes: list[str]) -> float:
    """Correctness in [0, 1] of a story about meta["subject"]; why points were lost goes to `notes`."""
    subject = values.world.character(meta["subject"])
    mentioned = {v for k, v, _ in values.mentions(text) if k == "name"}
    if subject.name not in mentioned:
        notes.append(f"story does not name {subject.name}")
        return 0.0
    claims = {(k, v, ok) for k, v, ok in values.claims(text, {subject.name})}
    n_true = len({(k, v) for k, v, ok in claims if ok})
    false = sorted({(k, str(v)) for k, v, ok in claims if not ok})
    if false:
        notes.append(f"false statements: {false}")
    if n_true < 2:
        notes.append(f"only {n_true} true fact(s)")
    return (0.4 + 0.3 * min(n_true, 2)) * 0.5 ** len(false)
