"""Reading world facts out of free text: which world values a text mentions, and which of the
facts it states are true.

The gold scorer's checks of fact, follow-up and story answers are built on these two questions, so
they are answered in one place, for any surface form the world can use (EN or ZH).
"""

from __future__ import annotations

import re
from itertools import permutations

from picochat.world import vocab
from picochat.world.entities import World
from picochat.world.text import CJK, SENTENCE_END

_AGE_EN = re.compile(r"(?<!\d)(\d{1,3})\s*-?\s*years?\s*-?\s*old\b|\baged?\s*(?:is\s*)?(\d{1,3})\b", re.I)
_AGE_ZH = re.compile(r"(\d{1,3})\s*岁|年龄是\s*(\d{1,3})")
_FRIEND_WORDS = re.compile(r"best friend|最好的朋友", re.I)


def alternation(words) -> str:
    """A regex alternation of the words, longest first, so that a word wins over its own prefix."""
    return "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))


class ValueFinder:
    """Finds the world values and character names in a text (`mentions`) and judges the facts it
    states (`claims`), for one world."""

    def __init__(self, world: World):
        """Every surface form the world can use, mapped to (kind, English value). Kinds are the
        attribute names, with "home" for places and "name" for character names."""
        self.world = world
        en: dict[str, tuple[str, str]] = {}
        zh: dict[str, tuple[str, str]] = {}
        for kind, table in (("species", vocab.SPECIES), ("colour", vocab.COLOURS), ("food", vocab.FOODS),
                            ("hobby", vocab.HOBBIES), ("job", vocab.JOBS)):
            for v, z in table.items():
                en[v.lower()], zh[z] = (kind, v), (kind, v)
        for v, z, _ in vocab.PLACES:
            en[v.lower()], zh[z] = ("home", v), ("home", v)
        names = {n: z for n, z, _ in vocab.NAMES}
        names.update({c.name: c.name_zh for c in world.characters})
        for n, z in names.items():
            zh[z] = ("name", n)
        self._en_values, self._zh_values = en, zh
        self._en_names = {n: n for n in names}
        self.world_names = {c.name for c in world.characters}  # names of this world's characters
        self._rx_en_values = re.compile(r"\b(?:" + alternation(en) + r")\b", re.I)
        self._rx_en_names = re.compile(r"\b(?:" + alternation(self._en_names) + r")\b")  # case-sensitive
        self._rx_zh = re.compile(alternation(zh))

    def mentions(self, text: str) -> list[tuple[str, str, int]]:
        """[(kind, English value, position)] of every world value and name in text, in order."""
        out = [(*self._en_values[m.group(0).lower()], m.start()) for m in self._rx_en_values.finditer(text)]
        out += [("name", m.group(0), m.start()) for m in self._rx_en_names.finditer(text)]
        if CJK.search(text):
            out += [(*self._zh_values[m.group(0)], m.start()) for m in self._rx_zh.finditer(text)]
        return sorted(out, key=lambda t: t[2])

    def claims(self, text: str, scope: set[str]) -> list[tuple[str, object, bool]]:
        """[(attribute, value, true?)] for every world value stated in text. A value is true when
        it belongs to a character named in its sentence (or, with no name there, in the last
        sentence that named one; `scope` before the first name)."""
        claims = []
        for sentence in SENTENCE_END.split(text):
            if not sentence:
                continue
            ms = self.mentions(sentence)
            names = {v for k, v, _ in ms if k == "name" and v in self.world_names}
            previous, scope = scope, (names or scope)
            people = [self.world.character(n) for n in scope]
            for kind, value, _ in ms:
                if kind != "name":
                    claims.append((kind, value, any(getattr(c, kind) == value for c in people)))
            for m in list(_AGE_EN.finditer(sentence)) + list(_AGE_ZH.finditer(sentence)):
                age = int(m.group(1) or m.group(2))
                claims.append(("age", age, any(c.age == age for c in people)))
            if _FRIEND_WORDS.search(sentence):
                pair = names | previous
                if len(pair) >= 2:
                    true = any(self.world.character(x).friend == y for x, y in permutations(pair, 2))
                    claims.append(("friend", tuple(sorted(pair)), true))
        return claims
