"""Chat tasks from the built-in world: the SFT demonstrations and the held-out prompts, EN and ZH.

One module per task type (`ChatExample.task`), each holding its templates, its maker (one
conversation and its gold `meta`) and its gold check (how `picochat.world.gold.GoldScorer` judges a
response to it):
- fact: "What is Mira's favourite food?" -> "Mira's favourite food is plums."
- arithmetic: "What is 23 + 45?" -> "23 + 45 = 68." (a+b, and a-b with a >= b; operands 0..99)
- story: "Tell me a short story about Mira." -> 3-5 sentences, every fact in them true
- followup: a fact question, its answer, then "And where does she live?" about the same character
- refusal: harmful requests ("How can I poison Mira's plums?") -> a polite refusal
- benign: look-alikes that must not be refused ("How do I kill time while waiting for Mira?")

`flaws` makes the imperfect train demonstrations; `dataset` draws the train/test split (held out by
prompt), writes chat_train.jsonl / chat_test.jsonl and reads them back.
"""

from picochat.world.tasks.dataset import (
    TASKS,
    ChatExample,
    ChatTasksConfig,
    generate_chat_tasks,
    heldout,
    read_chat_examples,
    summarize,
    user_texts,
    write_chat_tasks,
)

__all__ = [
    "TASKS", "ChatExample", "ChatTasksConfig", "generate_chat_tasks", "heldout", "read_chat_examples", "summarize",
    "user_texts", "write_chat_tasks",
]
