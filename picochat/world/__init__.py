"""The built-in fictional world: characters and places with known facts (EN + ZH), and a
pretraining corpus that states those facts in many phrasings, plus arithmetic text."""

from picochat.world.corpus import fact_sentence, generate_corpus, question
from picochat.world.entities import (
    ATTRIBUTES, Attribute, Character, Fact, Place, World, WorldConfig, build_world, iter_facts,
)
from picochat.world.vocab import zh
from picochat.world.writer import read_world, write_world

__all__ = [
    "ATTRIBUTES", "Attribute", "Character", "Fact", "Place", "World", "WorldConfig", "build_world",
    "iter_facts", "zh", "generate_corpus", "fact_sentence", "question", "write_world", "read_world",
]
