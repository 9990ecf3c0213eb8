"""How a character becomes template text: its surface forms as template fields, EN and ZH.

The corpus and the chat tasks fill the same `{field}` templates, so the fields are built here once:
`fields(c, world, lang)` gives a character's values with articles and pronouns, `refer` adds the
subject references (the name, or a pronoun once the character was named), and `prefixed` renames
the fields of one of several characters in a sentence (`A_home`, `B_food`, ...).
"""

from __future__ import annotations

from picochat.world import vocab
from picochat.world.entities import Character, World


def article(word: str) -> str:
    """'an owl', 'a fox'."""
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def cap(text: str) -> str:
    """The text with its first letter upper-case (the rest unchanged)."""
    return text[:1].upper() + text[1:]


def fill(template: str, f: dict) -> str:
    """A template filled from fields `f`, as the start of a sentence."""
    return cap(template.format_map(f))


def join_sentences(sentences: list[str], lang: str) -> str:
    """Sentences as one text: space-separated in English, run together in Chinese."""
    return ("" if lang == "zh" else " ").join(sentences)


def en_fields(c: Character, world: World) -> dict:
    """English template fields of a character (values, articles, pronouns)."""
    she = c.gender == "female"
    return {
        "name": c.name, "species": c.species, "a_species": article(c.species),
        "A_species": cap(article(c.species)), "colour": c.colour, "a_colour": article(c.colour),
        "Colour": cap(c.colour), "home": c.home, "home_kind": world.place(c.home).kind,
        "food": c.food, "Food": cap(c.food), "friend": c.friend, "age": c.age,
        "hobby": c.hobby, "Hobby": cap(c.hobby), "job": c.job, "a_job": article(c.job),
        "A_job": cap(article(c.job)),
        "pn": "she" if she else "he", "pp": "her" if she else "his", "po": "her" if she else "him",
        "Pn": "She" if she else "He", "Pp": "Her" if she else "His",
    }


def zh_fields(c: Character, world: World) -> dict:
    """Chinese template fields of a character."""
    return {
        "name": c.name_zh, "species": vocab.zh(c.species),
        "m": vocab.SPECIES_MEASURE_ZH.get(c.species, "只"), "colour": vocab.zh(c.colour),
        "home": vocab.zh(c.home), "home_kind": vocab.PLACE_KINDS[world.place(c.home).kind],
        "food": vocab.zh(c.food), "friend": vocab.zh(c.friend), "age": c.age,
        "hobby": vocab.zh(c.hobby), "job": vocab.zh(c.job),
        "ta": "她" if c.gender == "female" else "他",
    }


def fields(c: Character, world: World, lang: str) -> dict:
    return en_fields(c, world) if lang == "en" else zh_fields(c, world)


def refer(f: dict, lang: str, by_pronoun: bool) -> dict:
    """Add the subject references S/s (subject), P/p (possessive), O (object): the name, or a
    pronoun when the character was already named in the document."""
    if lang == "zh":
        s = f["ta"] if by_pronoun else f["name"]
        return {**f, "S": s, "P": s + "的"}
    if by_pronoun:
        return {**f, "S": f["Pn"], "s": f["pn"], "P": f["Pp"], "p": f["pp"], "O": f["po"]}
    n = f["name"]
    return {**f, "S": n, "s": n, "P": n + "'s", "p": n + "'s", "O": n}


def prefixed(c: Character, world: World, lang: str, p: str) -> dict:
    """The fields of c renamed for a sentence about several characters: {p} is the name, {p}_home
    its home, and so on for every field."""
    f = fields(c, world, lang)
    return {p: f["name"], **{f"{p}_{k}": v for k, v in f.items()}}
