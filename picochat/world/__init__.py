"""The built-in fictional world: characters and places with known facts (EN + ZH), and a
pretraining corpus that states those facts in many phrasings, plus arithmetic text; chat tasks
about the same world (SFT demonstrations and held-out prompts) and the gold scorer that judges
answers to them.

Modules, bottom up: `vocab` (every value, EN and ZH), `entities` (characters, places, the seeded
builder), `templates` (a character's template fields), `corpus` (the pretraining documents),
`writer` (world.json and corpus.jsonl), `tasks/` (the chat tasks: one module per task type with its
maker and its gold check, and `tasks.dataset` for the split and the files), `text` and `mentions`
(reading a response: length, repetition, the world values it states) and `gold` (the scorer).
"""

from picochat.world.corpus import fact_sentence, generate_corpus, question
from picochat.world.entities import (
    ATTRIBUTES,
    Attribute,
    Character,
    Fact,
    Place,
    World,
    WorldConfig,
    build_world,
    iter_facts,
)
from picochat.world.gold import GoldScore, GoldScorer
from picochat.world.tasks.dataset import (
    ChatExample,
    ChatTasksConfig,
    generate_chat_tasks,
    read_chat_examples,
    write_chat_tasks,
)
from picochat.world.vocab import zh
from picochat.world.writer import read_world, write_world

__all__ = [
    "ATTRIBUTES", "Attribute", "Character", "Fact", "Place", "World", "WorldConfig", "build_world",
    "iter_facts", "zh", "generate_corpus", "fact_sentence", "question", "write_world", "read_world",
    "ChatTasksConfig", "ChatExample", "generate_chat_tasks", "write_chat_tasks", "read_chat_examples",
    "GoldScorer", "GoldScore",
]
