"""Pretraining corpus for the built-in world: its facts in many phrasings, English and Chinese,
plus arithmetic text.

A document is built from sentence-level templates (one list per attribute and language) that are
filled from a Character and put in random order inside a document frame, so the same fact shows
up in many surface forms and a small model has to learn the fact rather than one string.

Kinds of documents (the "kind" field): bio, card (list/table records), qa, story, dialogue,
place, arithmetic. `generate_corpus` streams them until ~cfg.corpus_mb MB of text is out.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from picochat.world import vocab
from picochat.world.entities import ATTRIBUTES, Character, Place, World, WorldConfig
from picochat.world.templates import article, cap, fields, join_sentences, prefixed, refer

# ----------------------------------------------------------------------------------------------
# Sentence templates: one list per attribute (and a few that state two or three facts at once).
# Templates under "friend_mutual" say the friendship both ways and are only used when it is.

FACT_TEMPLATES: dict[str, dict[str, list[str]]] = {
    "en": {
        "species": ["{S} is {a_species}.", "By nature, {s} is {a_species}.",
                    "{S} was born {a_species}.", "In case you wondered, {s} is {a_species}."],
        "colour": ["{P} coat is {colour}.", "{S} is {colour} from head to toe.",
                   "{S} has a {colour} coat.", "The colour of {p} coat is {colour}."],
        "species+colour": ["{S} is {a_colour} {species}.", "{S} is {a_species} with a {colour} coat.",
                           "{S} is {a_colour} {species}, easy to spot anywhere."],
        "species+colour+home": ["{S} is {a_colour} {species} who lives in {home}.",
                                "{S} is {a_colour} {species} from {home}.",
                                "In {home} lives {name}, {a_colour} {species}."],
        "home": ["{S} lives in {home}.", "{P} home is in {home}.", "{S} makes {pp} home in {home}.",
                 "{home} is where {s} lives.", "{S} has always lived in {home}.",
                 "You can find {O} in {home}, where {pn} lives."],
        "food": ["{P} favourite food is {food}.", "{S} loves to eat {food}.",
                 "More than anything, {s} likes to eat {food}.",
                 "{S} would eat {food} every day if {pn} could.", "Of all foods, {s} likes {food} best."],
        "friend": ["{P} best friend is {friend}.", "{friend} is {p} best friend.",
                   "{S} spends most days with {pp} best friend, {friend}.",
                   "The best friend of {name} is {friend}."],
        "friend_mutual": ["{S} and {friend} are best friends.", "{S} is best friends with {friend}."],
        "age": ["{S} is {age} years old.", "{S} turned {age} this year.", "{P} age is {age}.",
                "{S} is {age} years old this year."],
        "hobby": ["{P} hobby is {hobby}.", "{S} loves {hobby}.", "In {pp} free time, {s} enjoys {hobby}.",
                  "{S} spends every free hour {hobby}.", "What {s} enjoys most is {hobby}."],
        "job": ["{S} works as {a_job}.", "By trade, {s} is {a_job}.", "{S} is {a_job} in {home}.",
                "{S} earns {pp} living as {a_job}.", "{S} has worked as {a_job} for years."],
    },
    "zh": {
        "species": ["{S}是一{m}{species}。", "{S}是一{m}可爱的{species}。", "{S}是{species}。"],
        "colour": ["{P}毛是{colour}的。", "{S}全身都是{colour}的。", "{S}长着一身{colour}的毛。"],
        "species+colour": ["{S}是一{m}{colour}的{species}。", "{S}是一{m}{colour}{species}。"],
        "species+colour+home": ["{S}是一{m}住在{home}的{colour}{species}。",
                                "{S}是一{m}{colour}的{species}，住在{home}。",
                                "{home}住着一{m}{colour}的{species}，名叫{name}。"],
        "home": ["{S}住在{home}。", "{P}家在{home}。", "{S}一直住在{home}。", "{home}是{P}家。"],
        "food": ["{S}最喜欢吃{food}。", "{S}最爱的食物是{food}。", "{food}是{S}最喜欢的食物。",
                 "{S}每天都想吃{food}。"],
        "friend": ["{S}最好的朋友是{friend}。", "{friend}是{S}最好的朋友。",
                   "{S}常常和最好的朋友{friend}在一起。"],
        "friend_mutual": ["{S}和{friend}是最好的朋友。"],
        "age": ["{S}今年{age}岁。", "{S}{age}岁了。", "{P}年龄是{age}岁。"],
        "hobby": ["{P}爱好是{hobby}。", "{S}喜欢{hobby}。", "{S}一有空就去{hobby}。",
                  "{S}最大的爱好是{hobby}。"],
        "job": ["{S}是一名{job}。", "{P}职业是{job}。", "{S}在{home}当{job}。", "{S}靠当{job}过日子。"],
    },
}

# Questions about one fact, asked in the third person ({name} is always the name).
QUESTIONS: dict[str, dict[str, list[str]]] = {
    "en": {
        "species": ["What kind of animal is {name}?", "What species is {name}?", "What animal is {name}?"],
        "colour": ["What colour is {name}?", "What colour is {name}'s coat?"],
        "home": ["Where does {name} live?", "Where is {name}'s home?", "Which place does {name} live in?"],
        "food": ["What is {name}'s favourite food?", "What does {name} like to eat most?",
                 "What food does {name} love best?"],
        "friend": ["Who is {name}'s best friend?", "Who is the best friend of {name}?"],
        "age": ["How old is {name}?", "What is {name}'s age?"],
        "hobby": ["What is {name}'s hobby?", "What does {name} like to do in {pp} free time?",
                  "What does {name} enjoy doing?"],
        "job": ["What is {name}'s job?", "What does {name} do for a living?", "What does {name} work as?"],
    },
    "zh": {
        "species": ["{name}是什么动物？", "{name}是哪一种动物？"],
        "colour": ["{name}是什么颜色的？", "{name}的毛是什么颜色？"],
        "home": ["{name}住在哪里？", "{name}的家在哪儿？"],
        "food": ["{name}最喜欢吃什么？", "{name}最爱的食物是什么？"],
        "friend": ["{name}最好的朋友是谁？", "谁是{name}最好的朋友？"],
        "age": ["{name}几岁了？", "{name}今年多大？"],
        "hobby": ["{name}的爱好是什么？", "{name}空闲的时候喜欢做什么？"],
        "job": ["{name}是做什么工作的？", "{name}的职业是什么？"],
    },
}

# Short answers (the value alone, as a reply).
SHORT_ANSWERS: dict[str, dict[str, list[str]]] = {
    "en": {
        "species": ["{A_species}.", "{name} is {a_species}."], "colour": ["{Colour}."],
        "home": ["{home}.", "In {home}."], "food": ["{Food}."], "friend": ["{friend}."],
        "age": ["{age}.", "{age} years old."], "hobby": ["{Hobby}."], "job": ["{A_job}."],
    },
    "zh": {
        "species": ["{species}。", "一{m}{species}。"], "colour": ["{colour}。"], "home": ["{home}。"],
        "food": ["{food}。"], "friend": ["{friend}。"], "age": ["{age}岁。"], "hobby": ["{hobby}。"],
        "job": ["{job}。"],
    },
}


def fact_sentence(c: Character, world: World, attribute: str, lang: str, rng: random.Random,
                  by_pronoun: bool = False) -> str:
    """One sentence stating `attribute` of `c` in `lang`, phrasing drawn with rng."""
    f = refer(fields(c, world, lang), lang, by_pronoun)
    options = list(FACT_TEMPLATES[lang][attribute])
    if attribute == "friend" and world.character(c.friend).friend == c.name:
        options += FACT_TEMPLATES[lang]["friend_mutual"]
    return cap(rng.choice(options).format_map(f))


def question(c: Character, world: World, attribute: str, lang: str, rng: random.Random) -> str:
    """A question asking for `attribute` of `c` (the gold answer is getattr(c, attribute))."""
    return rng.choice(QUESTIONS[lang][attribute]).format_map(fields(c, world, lang))


def _fact_sentences(c: Character, world: World, attrs: list[str], lang: str, rng: random.Random,
                    named: bool) -> list[str]:
    """Sentences stating each attribute in `attrs` (some merged), in random order. Once the
    character is named, later sentences refer to it by pronoun about half the time."""
    attrs = list(attrs)
    groups: list[str] = []
    if "species" in attrs and "colour" in attrs and rng.random() < 0.6:
        attrs.remove("species"), attrs.remove("colour")
        if "home" in attrs and rng.random() < 0.4:
            attrs.remove("home")
            groups.append("species+colour+home")
        else:
            groups.append("species+colour")
    groups += attrs
    rng.shuffle(groups)
    out = []
    for g in groups:
        by_pronoun = named and rng.random() < 0.5
        if "+" in g:
            f = refer(fields(c, world, lang), lang, by_pronoun)
            out.append(cap(rng.choice(FACT_TEMPLATES[lang][g]).format_map(f)))
        else:
            out.append(fact_sentence(c, world, g, lang, rng, by_pronoun))
        named = True
    return out


def _join_list(items: list[str], lang: str) -> str:
    """'A, B and C' / 'A、B和C'."""
    if len(items) == 1:
        return items[0]
    if lang == "zh":
        return "、".join(items[:-1]) + "和" + items[-1]
    return ", ".join(items[:-1]) + " and " + items[-1]


# ----------------------------------------------------------------------------------------------
# bio: intro frame + every fact of one character, shuffled. "{list}" frames use bullet lines.

BIO_FRAMES: dict[str, list[str]] = {
    "en": ["{facts}", "Meet {name}. {facts}", "Let me tell you about {name}. {facts}",
           "This is a short note about {name}. {facts}", "{name}\n\n{facts}", "Who is {name}? {facts}",
           "Some facts about {name}:\n{list}", "{facts} And that is all about {name}.",
           "A portrait of {name}. {facts}", "About {name}:\n{list}"],
    "zh": ["{facts}", "我来介绍一下{name}。{facts}", "{name}\n\n{facts}", "{name}是谁？{facts}",
           "关于{name}的几件事：\n{list}", "认识一下{name}吧。{facts}", "{facts}这就是{name}。"],
}


def render_bio(c: Character, world: World, lang: str, rng: random.Random) -> str:
    frame = rng.choice(BIO_FRAMES[lang])
    named = not frame.startswith("{facts}")
    sentences = _fact_sentences(c, world, list(ATTRIBUTES), lang, rng, named=named)
    name = c.name if lang == "en" else c.name_zh
    return frame.format(name=name, facts=join_sentences(sentences, lang),
                        list="\n".join("- " + s for s in sentences))


# ----------------------------------------------------------------------------------------------
# card: record-like text (field: value lines, tables, CSV). Each frame is a small function of
# the (label, value) rows of one character.

CARD_LABELS = {
    "en": {"name": "Name", **{a.name: cap(a.label_en) for a in ATTRIBUTES.values()}},
    "zh": {"name": "姓名", **{a.name: a.label_zh for a in ATTRIBUTES.values()}},
}


def _card_rows(c: Character, lang: str, rng: random.Random) -> list[tuple[str, str]]:
    """[(label, value)] for name + every attribute; attribute order shuffled."""
    attrs = list(ATTRIBUTES)
    rng.shuffle(attrs)
    labels = CARD_LABELS[lang]
    if lang == "en":
        rows = [(labels[a], str(getattr(c, a))) for a in attrs]
        return [(labels["name"], c.name)] + rows
    rows = [(labels[a], vocab.zh(getattr(c, a)) + ("岁" if a == "age" else "")) for a in attrs]
    return [(labels["name"], c.name_zh)] + rows


def _md_table(rows: list[tuple[str, str]], head: tuple[str, str]) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


CARD_FRAMES: dict[str, list[Callable[[list[tuple[str, str]]], str]]] = {
    "en": [
        lambda rows: "\n".join(f"{k}: {v}" for k, v in rows),
        lambda rows: " ".join(f"{k}: {v}." for k, v in rows),
        lambda rows: _md_table(rows, ("Field", "Value")),
        lambda rows: "\n".join(f"- {k}: {v}" for k, v in rows),
        lambda rows: "; ".join(f"{k.lower().replace(' ', '_')}={v}" for k, v in rows),
        lambda rows: ",".join(k.lower() for k, _ in rows) + "\n" + ",".join(v for _, v in rows),
        lambda rows: f"Profile of {rows[0][1]}\n" + "\n".join(f"{k}: {v}" for k, v in rows[1:]),
        lambda rows: f"Character sheet - {rows[0][1]}\n" + "\n".join(f"* {k.lower()}: {v}" for k, v in rows[1:]),
        lambda rows: f"{rows[0][1]} (" + ", ".join(f"{k.lower()}: {v}" for k, v in rows[1:]) + ")",
    ],
    "zh": [
        lambda rows: "\n".join(f"{k}：{v}" for k, v in rows),
        lambda rows: "".join(f"{k}：{v}。" for k, v in rows),
        lambda rows: _md_table(rows, ("项目", "内容")),
        lambda rows: "\n".join(f"- {k}：{v}" for k, v in rows),
        lambda rows: f"【{rows[0][1]}】" + "；".join(f"{k}：{v}" for k, v in rows[1:]) + "。",
        lambda rows: f"{rows[0][1]}的档案\n" + "\n".join(f"{k}：{v}" for k, v in rows[1:]),
        lambda rows: f"{rows[0][1]}（" + "，".join(f"{k}：{v}" for k, v in rows[1:]) + "）",
    ],
}


def render_card(c: Character, world: World, lang: str, rng: random.Random) -> str:
    return rng.choice(CARD_FRAMES[lang])(_card_rows(c, lang, rng))


# ----------------------------------------------------------------------------------------------
# qa: question/answer pairs about one character; answers short or as a full sentence.

QA_FRAMES: dict[str, list[tuple[str, str, str]]] = {
    # (header, pair template, separator between pairs)
    "en": [("", "Q: {q}\nA: {a}", "\n"), ("", "Question: {q}\nAnswer: {a}", "\n\n"),
           ("", "{q} {a}", " "), ("FAQ about {name}\n\n", "Q: {q}\nA: {a}", "\n\n"),
           ("Quiz time!\n", "{q}\nAnswer: {a}", "\n"), ("", "Ask: {q}\nReply: {a}", "\n"),
           ("", "- {q} {a}", "\n"), ("Here are some questions about {name}, with answers.\n", "{q}\n{a}", "\n"),
           ("Test your memory of {name}.\n", "Q: {q}\nA: {a}", "\n")],
    "zh": [("", "问：{q}\n答：{a}", "\n"), ("", "问题：{q}\n回答：{a}", "\n\n"), ("", "{q}{a}", ""),
           ("关于{name}的常见问题\n\n", "问：{q}\n答：{a}", "\n\n"), ("小测验\n", "{q}\n答案：{a}", "\n"),
           ("", "- {q} {a}", "\n"), ("下面是一些关于{name}的问题和答案。\n", "{q}\n{a}", "\n")],
}


def render_qa(c: Character, world: World, lang: str, rng: random.Random) -> str:
    header, pair, sep = rng.choice(QA_FRAMES[lang])
    attrs = rng.sample(list(ATTRIBUTES), rng.randint(3, 6))
    f = fields(c, world, lang)
    pairs = []
    for attr in attrs:
        q = question(c, world, attr, lang, rng)
        if rng.random() < 0.5:
            a = rng.choice(SHORT_ANSWERS[lang][attr]).format_map(f)
        else:
            a = fact_sentence(c, world, attr, lang, rng)
        pairs.append(pair.format(q=q, a=a))
    return header.format(name=f["name"]) + sep.join(pairs)


# ----------------------------------------------------------------------------------------------
# story: a character and their best friend. Opening + shuffled events + ending. Fields are
# prefixed: A_* the character, B_* the friend, X_*/Y_* either of them in an event.

STORY_OPENINGS: dict[str, list[str]] = {
    "en": ["One sunny morning, {A} the {A_colour} {A_species} set out from {A_home} to visit {A_pp} best friend {B}.",
           "It was a quiet afternoon in {A_home}. {A}, {A_a_colour} {A_species}, was thinking about "
           "{A_pp} best friend {B}.",
           "Once upon a time, {A_a_species} named {A} lived in {A_home}. {A_Pp} best friend was {B}.",
           "This is a story about {A} and {A_pp} best friend, {B}.",
           "On a rainy day, {A} met {A_pp} best friend {B} at the market in {A_home}.",
           "{A} had not seen {A_pp} best friend {B} for a week, so {A_pn} decided to pay a visit.",
           "Last spring, {A} and {A_pp} best friend {B} went on a small adventure.",
           "Every year, {A} and {B}, {A_pp} best friend, have a picnic together.",
           "Early one morning, {B} knocked on the door of {A}, {A_pp} best friend, in {A_home}."],
    "zh": ["一个晴朗的早晨，{A}这{A_m}{A_colour}的{A_species}从{A_home}出发，去看望最好的朋友{B}。",
           "{A_home}的午后很安静。{A}正在想念{A_ta}最好的朋友{B}。",
           "从前，{A_home}住着一{A_m}{A_species}，名叫{A}。{A_ta}最好的朋友是{B}。",
           "这是一个关于{A}和{A_ta}最好的朋友{B}的故事。",
           "一个下雨天，{A}在{A_home}的集市上遇到了最好的朋友{B}。",
           "{A}已经一个星期没见到最好的朋友{B}了，于是决定去拜访。",
           "去年春天，{A}和{A_ta}最好的朋友{B}一起去冒险。"],
}
STORY_EVENTS: dict[str, list[str]] = {
    "en": ["{X} packed some {X_food}, {X_pp} favourite food.",
           "Along the way, {X} talked about {X_hobby}, which {X_pn} loves more than anything.",
           "{X}, who works as {X_a_job}, told funny stories about {X_pp} work.",
           "{X} laughed and said that {X_pn} was {X_age} years old now.",
           "{X} the {X_species} and {Y} the {Y_species} walked side by side.",
           "{X}'s {X_colour} coat shone in the sun.",
           "They stopped in {X_home}, the {X_home_kind} where {X} lives.",
           "{Y} shared some {Y_food} with {X}; {Y_food} is what {Y_pn} likes to eat most.",
           "Later, {X} and {Y} spent an hour {X_hobby}, {X}'s favourite hobby.",
           "As {X_a_job}, {X} knew exactly what to do."],
    "zh": ["{X}带了一些{X_food}，那是{X_ta}最喜欢的食物。",
           "路上，{X}一直在聊{X_hobby}，那是{X_ta}最大的爱好。",
           "{X}是一名{X_job}，给大家讲了很多工作上的趣事。",
           "{X}笑着说自己今年已经{X_age}岁了。",
           "{X}这{X_m}{X_species}和{Y}这{Y_m}{Y_species}并肩走着。",
           "阳光下，{X}{X_colour}的毛闪闪发亮。",
           "他们在{X_home}停了下来，{X}就住在那里。",
           "后来，{X}和{Y}一起{X_hobby}，那是{X}最喜欢的事。",
           "{Y}把{Y_food}分给{X}吃，{Y}最喜欢吃{Y_food}了。"],
}
STORY_ENDINGS: dict[str, list[str]] = {
    "en": ["In the evening, {A} went home to {A_home}, happy to have such a good friend.",
           "It was a wonderful day for the two friends.", "{A} and {B} promised to meet again soon.",
           "And that is why {B} is {A}'s best friend.", "The end.",
           "When the sun set, {B} walked back to {B_home}.", "They will remember that day for a long time."],
    "zh": ["晚上，{A}回到了{A_home}，心里很高兴。", "这真是美好的一天。", "{A}和{B}约好很快再见面。",
           "这就是为什么{B}是{A}最好的朋友。", "故事讲完了。", "太阳下山了，{B}走回了{B_home}。"],
}


def render_story(c: Character, world: World, lang: str, rng: random.Random) -> str:
    a, b = c, world.character(c.friend)
    ab = {**prefixed(a, world, lang, "A"), **prefixed(b, world, lang, "B")}
    parts = [rng.choice(STORY_OPENINGS[lang]).format_map(ab)]
    for event in rng.sample(STORY_EVENTS[lang], rng.randint(3, 5)):
        x, y = (a, b) if rng.random() < 0.5 else (b, a)
        xy = {**prefixed(x, world, lang, "X"), **prefixed(y, world, lang, "Y")}
        parts.append(cap(event.format_map(xy)))
    parts.append(rng.choice(STORY_ENDINGS[lang]).format_map(ab))
    return join_sentences(parts, lang)


# ----------------------------------------------------------------------------------------------
# dialogue: two characters ask each other about themselves; answers are in the first person.

DIALOGUE_ASK: dict[str, dict[str, list[tuple[str, str]]]] = {
    # attribute -> [(question from Y, answer by X)]; X fields unprefixed, {Y} is the asker's name.
    "en": {
        "species": [("I forgot, what kind of animal are you?", "I am {a_species}!"),
                    ("Remind me, what animal are you?", "I am {a_species}, of course.")],
        "colour": [("What colour is your coat?", "My coat is {colour}."),
                   ("Your coat looks lovely. What colour is it?", "It is {colour}, thank you.")],
        "home": [("Where do you live these days?", "I live in {home}."),
                 ("Are you still living in the same place?", "Yes, my home is in {home}.")],
        "food": [("What is your favourite food?", "My favourite food is {food}."),
                 ("What should I bring to the picnic?", "Bring {food}, please. I love {food}.")],
        "friend": [("Who is your best friend?", "My best friend is {friend}.")],
        "age": [("How old are you now?", "I am {age} years old."),
                ("Did you have a birthday recently?", "I did! I am {age} now.")],
        "hobby": [("What do you like to do for fun?", "I love {hobby}."),
                  ("What do you do in your free time?", "Mostly {hobby}. It is my hobby.")],
        "job": [("What do you do for work?", "I work as {a_job}."),
                ("Are you still working?", "Yes, I am {a_job} in {home}.")],
    },
    "zh": {
        "species": [("你是什么动物呀？", "我是一{m}{species}。")],
        "colour": [("你的毛是什么颜色的？", "我的毛是{colour}的。")],
        "home": [("你现在住在哪里？", "我住在{home}。"), ("你的家在哪儿？", "我的家在{home}。")],
        "food": [("你最喜欢吃什么？", "我最喜欢吃{food}。"), ("野餐要带什么？", "带点{food}吧，我最爱吃{food}了。")],
        "friend": [("你最好的朋友是谁？", "我最好的朋友是{friend}。")],
        "age": [("你今年几岁了？", "我今年{age}岁了。")],
        "hobby": [("你平时喜欢做什么？", "我喜欢{hobby}。"), ("你有什么爱好？", "我的爱好是{hobby}。")],
        "job": [("你是做什么工作的？", "我是一名{job}。")],
    },
}
# When the asker *is* the best friend, the answer names them back.
DIALOGUE_FRIEND_IS_ASKER = {"en": "You are, {friend}! You are my best friend.",
                            "zh": "就是你呀，{friend}！你是我最好的朋友。"}
DIALOGUE_OPEN = {
    "en": [("Hello, {B}!", "Hi, {A}! How are you?"), ("Good morning, {B}.", "Good morning, {A}!"),
           ("{B}! It is so good to see you.", "You too, {A}.")],
    "zh": [("你好，{B}！", "你好，{A}！最近怎么样？"), ("早上好，{B}。", "早上好，{A}！")],
}
DIALOGUE_CLOSE = {
    "en": [("See you tomorrow, {B}!", "Goodbye, {A}!"), ("I have to go now.", "Take care, {A}.")],
    "zh": [("明天见，{B}！", "再见，{A}！"), ("我得走了。", "路上小心，{A}。")],
}


def _script(lines: list[tuple[str, str]], lang: str) -> str:
    colon = "：" if lang == "zh" else ": "
    return "\n".join(f"{who}{colon}{text}" for who, text in lines)


def _quoted(lines: list[tuple[str, str]], lang: str) -> str:
    if lang == "zh":
        return "\n".join(f"{who}说：“{text}”" for who, text in lines)
    return "\n".join(f'{who} said, "{text}"' for who, text in lines)


DIALOGUE_FRAMES: dict[str, list[Callable[[list, dict, str], str]]] = {
    # each: (lines, names {"A", "B", "place"}, lang) -> text
    "en": [
        lambda lines, n, lang: _script(lines, lang),
        lambda lines, n, lang: _quoted(lines, lang),
        lambda lines, n, lang: f"A conversation between {n['A']} and {n['B']}.\n" + _script(lines, lang),
        lambda lines, n, lang: f"{n['A']} met {n['B']} in {n['place']}.\n" + _quoted(lines, lang),
        lambda lines, n, lang: f"Scene: a path in {n['place']}.\n" + "\n".join(f"{w.upper()}: {t}" for w, t in lines),
        lambda lines, n, lang: "\n".join(f"[{w}] {t}" for w, t in lines),
        lambda lines, n, lang: f"Overheard in {n['place']}:\n" + _script(lines, lang),
        lambda lines, n, lang: "\n".join(f"{w} says: {t}" for w, t in lines),
    ],
    "zh": [
        lambda lines, n, lang: _script(lines, lang),
        lambda lines, n, lang: _quoted(lines, lang),
        lambda lines, n, lang: f"{n['A']}和{n['B']}的对话\n" + _script(lines, lang),
        lambda lines, n, lang: f"{n['A']}在{n['place']}遇到了{n['B']}。\n" + _quoted(lines, lang),
        lambda lines, n, lang: f"场景：{n['place']}的小路上。\n" + _script(lines, lang),
        lambda lines, n, lang: "\n".join(f"【{w}】{t}" for w, t in lines),
    ],
}


def render_dialogue(c: Character, world: World, lang: str, rng: random.Random) -> str:
    if rng.random() < 0.6:
        other = world.character(c.friend)
    else:
        other = rng.choice([o for o in world.characters if o.name != c.name])
    fa, fb = fields(c, world, lang), fields(other, world, lang)
    names = {"A": fa["name"], "B": fb["name"], "place": fa["home"]}
    greet, reply = rng.choice(DIALOGUE_OPEN[lang])
    lines = [(fa["name"], greet.format(**names)), (fb["name"], reply.format(**names))]
    # B asks A, then (sometimes) A asks B back.
    for (x, fx), (y, fy) in [((c, fa), (other, fb)), ((other, fb), (c, fa))][: rng.randint(1, 2)]:
        for attr in rng.sample(list(ATTRIBUTES), rng.randint(1, 3)):
            ask, answer = rng.choice(DIALOGUE_ASK[lang][attr])
            if attr == "friend" and x.friend == y.name:
                answer = DIALOGUE_FRIEND_IS_ASKER[lang]
            lines.append((fy["name"], ask.format_map(fx)))
            lines.append((fx["name"], answer.format_map(fx)))
    bye, reply = rng.choice(DIALOGUE_CLOSE[lang])
    lines += [(fa["name"], bye.format(**names)), (fb["name"], reply.format(**names))]
    return rng.choice(DIALOGUE_FRAMES[lang])(lines, names, lang)


# ----------------------------------------------------------------------------------------------
# place: a place and who lives there.

PLACE_FRAMES: dict[str, list[str]] = {
    "en": ["{place} is {a_kind} {where}. {residents}", "Welcome to {place}, {a_kind} {where}! {residents}",
           "{place}\n\nKind: {kind}\nLocation: {where}\nResidents: {names}",
           "In {place}, {a_kind} {where}, you can meet {described}.",
           "Who lives in {place}? {described_cap} all live there.",
           "{place} is home to {n} animals: {described}.",
           "The residents of {place} are {names}. {place} is {a_kind} {where}.",
           "A guide to {place}. It is {a_kind} {where}. {residents}",
           "{place} lies {where}. {residents}"],
    "zh": ["{place}是{where}的一个{kind}。{residents}", "欢迎来到{place}！这是一个位于{where}的{kind}。{residents}",
           "{place}\n\n类型：{kind}\n位置：{where}\n居民：{names}", "在{place}，你可以见到{described}。",
           "谁住在{place}？{described}都住在那里。", "{place}一共住着{n}位居民：{names}。",
           "{place}位于{where}。{residents}"],
}
RESIDENT_SENTENCES: dict[str, list[str]] = {
    "en": ["{name} the {colour} {species} lives there and works as {a_job}.",
           "{name}, {a_colour} {species}, lives in {home}.", "{name} lives there too; {pn} loves {hobby}."],
    "zh": ["{name}是一{m}{colour}的{species}，在这里当{job}。", "{name}也住在{home}，{ta}喜欢{hobby}。",
           "{home}住着一{m}{species}，名叫{name}。"],
}
NOBODY = {"en": "Nobody lives in {place} yet.", "zh": "{place}现在还没有人住。"}


def render_place(p: Place, world: World, lang: str, rng: random.Random) -> str:
    people = list(world.residents(p.name))
    rng.shuffle(people)
    fs = [fields(r, world, lang) for r in people]
    if lang == "en":
        described = [f"{f['name']} the {f['colour']} {f['species']}" for f in fs]
        head = {"place": p.name, "kind": p.kind, "a_kind": article(p.kind),
                "where": vocab.FEATURE_PHRASES_EN[p.feature]}
    else:
        described = [f"{f['colour']}的{f['species']}{f['name']}" for f in fs]
        head = {"place": p.name_zh, "kind": vocab.PLACE_KINDS[p.kind], "where": vocab.FEATURE_PHRASES_ZH[p.feature]}
    if not people:
        return PLACE_FRAMES[lang][0].format(**head, residents=NOBODY[lang].format(**head))
    residents = [cap(rng.choice(RESIDENT_SENTENCES[lang]).format_map(f)) for f in fs]
    text = rng.choice(PLACE_FRAMES[lang]).format(
        **head, n=len(people), residents=join_sentences(residents, lang),
        names=_join_list([f["name"] for f in fs], lang), described=_join_list(described, lang),
        described_cap=cap(_join_list(described, lang)))
    return text


# ----------------------------------------------------------------------------------------------
# arithmetic: lines of a + b and a - b (a >= b), every answer correct. Each line holds exactly
# three numbers, in the order a, b, result.

ARITH_LINES: dict[str, dict[str, list[str]]] = {
    "en": {
        "+": ["{a} + {b} = {c}", "{a} plus {b} equals {c}.", "What is {a} plus {b}? It is {c}.",
              "The sum of {a} and {b} is {c}.", "Q: {a} + {b} = ? A: {c}", "Add {a} and {b} and you get {c}.",
              "{a} + {b} is {c}.", "{name} has {a} {items_a}. {Pn} finds {b} more. Now {pn} has {c} {items_c}."],
        "-": ["{a} - {b} = {c}", "{a} minus {b} equals {c}.", "What is {a} minus {b}? It is {c}.",
              "Q: {a} - {b} = ? A: {c}", "{a} take away {b} is {c}.", "{a} - {b} is {c}.",
              "{name} has {a} {items_a} and gives {b} to {friend}. Now {pn} has {c} {items_c} left."],
    },
    "zh": {
        "+": ["{a}加{b}等于{c}。", "{a} + {b} = {c}", "{a}加上{b}是多少？答案是{c}。", "{a}和{b}的和是{c}。",
              "问：{a}加{b}等于几？答：{c}。",
              "{name}有{a}{unit}{item}，又找到了{b}{unit}，现在{ta}有{c}{unit}{item}。"],
        "-": ["{a}减{b}等于{c}。", "{a} - {b} = {c}", "{a}减去{b}是多少？答案是{c}。", "{a}减去{b}得{c}。",
              "问：{a}减{b}等于几？答：{c}。",
              "{name}有{a}{unit}{item}，给了{friend}{b}{unit}，还剩{c}{unit}{item}。"],
    },
}
ARITH_ITEMS_EN = [("acorn", "acorns"), ("shell", "shells"), ("pebble", "pebbles"), ("stamp", "stamps"),
                  ("button", "buttons"), ("marble", "marbles")]
ARITH_ITEMS_ZH = [("颗", "橡果"), ("个", "贝壳"), ("块", "鹅卵石"), ("张", "邮票"), ("颗", "纽扣"), ("颗", "弹珠")]
ARITH_HEADERS = {
    "en": ["", "Arithmetic practice:\n", "Let's do some sums.\n", "Math drill\n", "Practice problems with answers:\n"],
    "zh": ["", "算术练习：\n", "做几道算术题吧。\n", "口算练习\n"],
}


def arithmetic_line(world: World, lang: str, rng: random.Random, max_operand: int, template: str | None = None,
                    op: str | None = None) -> str:
    op = op or ("+" if rng.random() < 0.6 else "-")
    a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
    if op == "-" and b > a:
        a, b = b, a
    c_val = a + b if op == "+" else a - b
    template = template or rng.choice(ARITH_LINES[lang][op])
    who = rng.choice(world.characters)
    f = fields(who, world, lang)
    if lang == "en":
        one, many = rng.choice(ARITH_ITEMS_EN)
        extra = {"items_a": one if a == 1 else many, "items_c": one if c_val == 1 else many}
    else:
        unit, item = rng.choice(ARITH_ITEMS_ZH)
        extra = {"unit": unit, "item": item}
    return template.format_map({**f, **extra, "a": a, "b": b, "c": c_val})


def render_arithmetic(world: World, lang: str, rng: random.Random, max_operand: int) -> str:
    n_lines = rng.randint(4, 10)
    if rng.random() < 0.5:  # one format for the whole document
        op = "+" if rng.random() < 0.6 else "-"
        template = rng.choice(ARITH_LINES[lang][op])
        lines = [arithmetic_line(world, lang, rng, max_operand, template, op) for _ in range(n_lines)]
    else:
        lines = [arithmetic_line(world, lang, rng, max_operand) for _ in range(n_lines)]
    return rng.choice(ARITH_HEADERS[lang]) + "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The stream.

CHARACTER_KINDS: dict[str, Callable] = {
    "bio": render_bio, "card": render_card, "qa": render_qa, "story": render_story, "dialogue": render_dialogue,
}
KIND_WEIGHTS: dict[str, float] = {"bio": 0.22, "card": 0.12, "qa": 0.2, "story": 0.2, "dialogue": 0.16, "place": 0.1}


def _cycle(items: tuple, rng: random.Random) -> Iterator:
    """Endless round-robin over items, reshuffled each pass, so coverage is even."""
    while True:
        order = list(items)
        rng.shuffle(order)
        yield from order


def generate_corpus(world: World, cfg: WorldConfig) -> Iterator[dict]:
    """Stream {"text", "lang", "kind"} documents until ~cfg.corpus_mb * 10**6 UTF-8 bytes of
    text have been yielded. Deterministic in (world, cfg)."""
    rng = random.Random(cfg.seed * 1_000_003 + 7)
    target_bytes = cfg.corpus_mb * 1e6
    characters, places = _cycle(world.characters, rng), _cycle(world.places, rng)
    kinds, weights = list(KIND_WEIGHTS), list(KIND_WEIGHTS.values())
    n_bytes = 0
    while n_bytes < target_bytes:
        lang = "zh" if rng.random() < cfg.zh_fraction else "en"
        if rng.random() < cfg.arithmetic_fraction:
            kind, text = "arithmetic", render_arithmetic(world, lang, rng, cfg.max_operand)
        else:
            kind = rng.choices(kinds, weights)[0]
            if kind == "place":
                text = render_place(next(places), world, lang, rng)
            else:
                text = CHARACTER_KINDS[kind](next(characters), world, lang, rng)
        n_bytes += len(text.encode("utf-8"))
        yield {"text": text, "lang": lang, "kind": kind}
