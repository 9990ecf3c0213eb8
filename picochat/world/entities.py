"""The world's data model (characters, places, facts) and its seeded builder.

A world is a small, fully known set of facts: every character has one value per attribute in
ATTRIBUTES. The pretraining corpus states these facts in many phrasings; later stages ask
questions about them and score answers against `iter_facts(world)`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from picochat.world import vocab


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 1234
    n_characters: int = 150
    n_places: int = 24
    corpus_mb: float = 4.0  # approx total UTF-8 size of the corpus text, in MB (10**6 bytes)
    zh_fraction: float = 0.2  # fraction of documents in Chinese
    arithmetic_fraction: float = 0.15  # fraction of documents that are arithmetic text
    max_operand: int = 99  # arithmetic a+b / a-b with operands in [0, max_operand]


@dataclass(frozen=True)
class Character:
    name: str
    name_zh: str
    gender: str  # "female" | "male": she/her/她 or he/his/他
    species: str
    colour: str
    home: str  # a Place.name
    food: str  # favourite food
    friend: str  # best friend, another Character.name
    age: int
    hobby: str
    job: str


@dataclass(frozen=True)
class Place:
    name: str
    name_zh: str
    kind: str  # village | town | city | port
    feature: str  # landscape feature: river, sea, forest, ...


@dataclass(frozen=True)
class Attribute:
    """One kind of fact a character has. `values` lists the possible English values where they
    come from a fixed vocabulary; None where they depend on the world (home, friend) or are
    numbers (age)."""

    name: str
    label_en: str
    label_zh: str
    values: tuple[str, ...] | None


ATTRIBUTES: dict[str, Attribute] = {
    "species": Attribute("species", "species", "物种", tuple(vocab.SPECIES)),
    "colour": Attribute("colour", "colour", "颜色", tuple(vocab.COLOURS)),
    "home": Attribute("home", "home", "住处", None),
    "food": Attribute("food", "favourite food", "最喜欢的食物", tuple(vocab.FOODS)),
    "friend": Attribute("friend", "best friend", "最好的朋友", None),
    "age": Attribute("age", "age", "年龄", None),
    "hobby": Attribute("hobby", "hobby", "爱好", tuple(vocab.HOBBIES)),
    "job": Attribute("job", "job", "职业", tuple(vocab.JOBS)),
}


@dataclass(frozen=True)
class Fact:
    subject: str  # Character.name
    attribute: str  # a key of ATTRIBUTES
    value: str | int  # English value; zh(value) gives the Chinese form


@dataclass(frozen=True)
class World:
    seed: int
    characters: tuple[Character, ...]
    places: tuple[Place, ...]
    _by_name: dict = field(default=None, init=False, repr=False, compare=False)
    _places_by_name: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_by_name", {c.name: c for c in self.characters})
        object.__setattr__(self, "_places_by_name", {p.name: p for p in self.places})

    def character(self, name: str) -> Character:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no character named {name!r} in this world (seed {self.seed})") from None

    def place(self, name: str) -> Place:
        try:
            return self._places_by_name[name]
        except KeyError:
            raise KeyError(f"no place named {name!r} in this world (seed {self.seed})") from None

    def residents(self, place_name: str) -> tuple[Character, ...]:
        return tuple(c for c in self.characters if c.home == place_name)

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "characters": [asdict(c) for c in self.characters],
            "places": [asdict(p) for p in self.places],
        }

    @classmethod
    def from_dict(cls, d: dict) -> World:
        return cls(
            seed=d["seed"],
            characters=tuple(Character(**c) for c in d["characters"]),
            places=tuple(Place(**p) for p in d["places"]),
        )


def build_world(cfg: WorldConfig) -> World:
    """Draw a world from cfg.seed. Same seed and sizes -> the same world, on any machine."""
    if not 2 <= cfg.n_characters <= len(vocab.NAMES):
        raise ValueError(f"WorldConfig.n_characters={cfg.n_characters}: must be in [2, {len(vocab.NAMES)}]")
    if not 1 <= cfg.n_places <= len(vocab.PLACES):
        raise ValueError(f"WorldConfig.n_places={cfg.n_places}: must be in [1, {len(vocab.PLACES)}]")
    rng = random.Random(cfg.seed)

    features = list(vocab.FEATURES)
    places = tuple(
        Place(name=name, name_zh=name_zh, kind=kind, feature=rng.choice(features))
        for name, name_zh, kind in rng.sample(vocab.PLACES, cfg.n_places)
    )

    # Homes: every place gets a resident before any place gets a second one (while characters last).
    homes = [p.name for p in places][: cfg.n_characters]
    homes += [rng.choice(places).name for _ in range(cfg.n_characters - len(homes))]
    rng.shuffle(homes)

    # Best friends: a random pairing, so friendship is symmetric. With an odd count the last
    # character's best friend is someone already paired (the one asymmetric friendship).
    names = rng.sample(vocab.NAMES, cfg.n_characters)
    order = list(range(cfg.n_characters))
    rng.shuffle(order)
    friend_of: dict[int, int] = {}
    for a, b in zip(order[0::2], order[1::2]):
        friend_of[a], friend_of[b] = b, a
    if cfg.n_characters % 2 == 1:
        friend_of[order[-1]] = order[0]

    characters = []
    for i, (name, name_zh, gender) in enumerate(names):
        characters.append(Character(
            name=name,
            name_zh=name_zh,
            gender=gender,
            species=rng.choice(tuple(vocab.SPECIES)),
            colour=rng.choice(tuple(vocab.COLOURS)),
            home=homes[i],
            food=rng.choice(tuple(vocab.FOODS)),
            friend=names[friend_of[i]][0],
            age=rng.randint(vocab.AGE_MIN, vocab.AGE_MAX),
            hobby=rng.choice(tuple(vocab.HOBBIES)),
            job=rng.choice(tuple(vocab.JOBS)),
        ))
    return World(seed=cfg.seed, characters=tuple(characters), places=places)


def iter_facts(world: World) -> Iterator[Fact]:
    """Every (character, attribute, value) fact of the world, characters in world order."""
    for c in world.characters:
        for attr in ATTRIBUTES:
            yield Fact(subject=c.name, attribute=attr, value=getattr(c, attr))
