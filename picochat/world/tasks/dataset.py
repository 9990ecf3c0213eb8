"""The chat-task dataset: its config, the train/test split, generation, and its files.

Every conversation is drawn from the same seeded world as the pretraining corpus, so its gold
answer is known (`meta`) and `picochat.world.gold.GoldScorer` can judge any response to it. The
task types live one per module beside this one (`fact`, `arithmetic`, `story`, `followup`,
`refusal`, `benign`), each with its templates, its maker and its gold check; `flaws` makes the
imperfect demonstrations.

Held out by prompt. The test split never shares a prompt with the train split, and it asks about
things the train split never shows: whole (character, attribute) pairs for fact and follow-up
questions (a best-friend pair is held out both ways), whole (a, b, op) triples for arithmetic, and
whole characters for stories, refusals and benign look-alikes. No train conversation states a
held-out fact anywhere, so a right test answer means the model *knows* the world from pretraining
(where every fact is stated) rather than having memorised a question/answer pair.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from picochat.world.entities import ATTRIBUTES, World
from picochat.world.tasks.arithmetic import make_arithmetic
from picochat.world.tasks.benign import make_benign
from picochat.world.tasks.fact import make_fact
from picochat.world.tasks.flaws import make_flawed
from picochat.world.tasks.followup import make_followup
from picochat.world.tasks.refusal import make_refusal
from picochat.world.tasks.story import make_story

TASKS = ("fact", "arithmetic", "story", "followup", "refusal", "benign")  # in the order each split draws them


@dataclass(frozen=True)
class ChatTasksConfig:
    seed: int = 4321
    n_train: int = 12000  # training conversations, all task types together
    n_test: int = 600  # held-out conversations (prompts never seen in train)
    zh_fraction: float = 0.25  # share of conversations in Chinese
    imperfect_fraction: float = 0.2  # share of train demonstrations that are flawed on purpose
    heldout_fraction: float = 0.15  # share of (character, attribute) pairs and of characters kept for test
    max_operand: int = 99  # arithmetic operands in [0, max_operand], like the corpus
    task_mix: tuple[tuple[str, float], ...] = (
        ("fact", 0.45), ("arithmetic", 0.2), ("story", 0.1), ("followup", 0.15), ("refusal", 0.05),
        ("benign", 0.05),
    )


@dataclass(frozen=True)
class ChatExample:
    messages: tuple[dict, ...]  # OpenAI-style {"role", "content"}; ends with the assistant demonstration
    task: str  # one of TASKS
    lang: str  # "en" | "zh"
    split: str  # "train" | "test"
    meta: dict  # JSON-serialisable gold info (see each task type's maker)
    imperfect: str | None = None  # None, or the flaw of the demonstration: one of flaws.FLAWS

    def prompt(self) -> list[dict]:
        """The conversation without its final assistant turn (what a model is asked to continue)."""
        return [dict(m) for m in self.messages[:-1]]

    def to_json(self) -> dict:
        return {"messages": [dict(m) for m in self.messages], "task": self.task, "lang": self.lang,
                "split": self.split, "meta": self.meta, "imperfect": self.imperfect}

    @classmethod
    def from_json(cls, d: dict, split: str | None = None) -> ChatExample:
        return cls(messages=tuple(dict(m) for m in d["messages"]), task=d["task"], lang=d["lang"],
                   split=d.get("split") or split or "train", meta=d.get("meta") or {},
                   imperfect=d.get("imperfect"))


def user_texts(messages) -> tuple[str, ...]:
    """The user text of a conversation's prompt; train and test never share one."""
    return tuple(m["content"] for m in messages if m["role"] == "user")


def heldout(world: World, cfg: ChatTasksConfig) -> tuple[frozenset[tuple[str, str]], frozenset[str]]:
    """(held-out (character, attribute) pairs, held-out characters) of the test split.

    Pairs are for fact and follow-up questions; a held-out best-friend pair is held out both ways
    (Mira's friend is Tobin <=> Tobin's friend is Mira). Characters are for story, refusal and benign
    prompts. Both are drawn from cfg.seed and the world, independent of the split sizes."""
    rng = random.Random(f"picochat-chat/{cfg.seed}/{world.seed}/heldout")
    pairs = [(c.name, a) for c in world.characters for a in ATTRIBUTES]
    k = max(1, round(cfg.heldout_fraction * len(pairs)))
    held = set(rng.sample(pairs, k))
    for name, attr in list(held):
        if attr == "friend":
            other = world.character(world.character(name).friend)
            if other.friend == name:
                held.add((other.name, "friend"))
    names = [c.name for c in world.characters]
    n_chars = min(len(names) - 1, max(1, round(cfg.heldout_fraction * len(names))))
    return frozenset(held), frozenset(rng.sample(names, n_chars))


def _counts(n: int, mix: tuple[tuple[str, float], ...]) -> dict[str, int]:
    """Split n over the tasks in proportion to their weights (largest remainder, sums to n)."""
    total = sum(w for _, w in mix)
    exact = {t: n * w / total for t, w in mix}
    counts = {t: int(x) for t, x in exact.items()}
    for t in sorted(exact, key=lambda t: exact[t] - counts[t], reverse=True)[: n - sum(counts.values())]:
        counts[t] += 1
    return counts


def _check(cfg: ChatTasksConfig, world: World) -> None:
    unknown = [t for t, _ in cfg.task_mix if t not in TASKS]
    if unknown:
        raise ValueError(f"ChatTasksConfig.task_mix: unknown task(s) {unknown}; known: {list(TASKS)}")
    if any(w < 0 for _, w in cfg.task_mix) or sum(w for _, w in cfg.task_mix) <= 0:
        raise ValueError("ChatTasksConfig.task_mix: weights must be >= 0 and not all zero")
    for name in ("zh_fraction", "imperfect_fraction"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"ChatTasksConfig.{name}={getattr(cfg, name)}: must be in [0, 1]")
    if not 0.0 < cfg.heldout_fraction < 1.0:
        raise ValueError(f"ChatTasksConfig.heldout_fraction={cfg.heldout_fraction}: must be in (0, 1)")
    if len(world.characters) < 3:
        raise ValueError("chat tasks need a world with at least 3 characters")


class _Pool:
    """Endless round-robin over items, reshuffled each pass, so coverage is even."""

    def __init__(self, items, rng: random.Random):
        self.items, self.rng, self.queue = list(items), rng, []
        if not self.items:
            raise ValueError("chat tasks: nothing to draw from (world too small for this split?)")

    def next(self):
        if not self.queue:
            self.queue = list(self.items)
            self.rng.shuffle(self.queue)
        return self.queue.pop()


def _make_split(world: World, cfg: ChatTasksConfig, split: str, n: int, held_pairs, held_chars,
                avoid: set) -> list[ChatExample]:
    is_test = split == "test"
    chars = world.characters
    story_chars = [c for c in chars if (c.name in held_chars) == is_test]
    if is_test:
        fact_pairs = sorted(held_pairs)
        allowed = lambda name, attr: True  # noqa: E731
    else:
        fact_pairs = [(c.name, a) for c in chars for a in ATTRIBUTES if (c.name, a) not in held_pairs]
        allowed = lambda name, attr: (name, attr) not in held_pairs  # noqa: E731

    counts = _counts(n, cfg.task_mix)
    out: list[ChatExample] = []
    seen: set = set()
    for task in TASKS:
        rng = random.Random(f"picochat-chat/{cfg.seed}/{world.seed}/{split}/{task}")
        pool = None
        if not counts.get(task, 0):
            continue
        if task in ("fact", "followup"):
            pool = _Pool(fact_pairs, rng)
        elif task in ("story", "refusal", "benign"):
            pool = _Pool(story_chars, rng)
        n_task = counts.get(task, 0)
        n_zh = round(cfg.zh_fraction * n_task)  # exact shares, so small splits have both languages
        langs = ["zh"] * n_zh + ["en"] * (n_task - n_zh)
        rng.shuffle(langs)
        for lang in langs:
            key = None
            for _attempt in range(100):
                key = None
                if task == "fact":
                    name, attr = pool.next()
                    messages, meta = make_fact(world.character(name), world, attr, lang, rng)
                elif task == "followup":
                    name, attr = pool.next()
                    firsts = [a for a in ATTRIBUTES if a != attr and allowed(name, a)]
                    if not firsts:
                        continue
                    messages, meta = make_followup(world.character(name), world, rng.choice(firsts), attr, lang, rng)
                elif task == "arithmetic":
                    op = "+" if rng.random() < 0.5 else "-"
                    a, b = rng.randint(0, cfg.max_operand), rng.randint(0, cfg.max_operand)
                    if op == "-" and b > a:
                        a, b = b, a
                    if (a, b, op) in avoid or (is_test and (a, b, op) in seen):
                        continue  # test triples are held out of train, and unique within test
                    messages, meta = make_arithmetic(a, b, op, lang, rng)
                else:
                    c = pool.next()
                    maker = {"story": make_story, "refusal": make_refusal, "benign": make_benign}[task]
                    messages, meta = maker(c, world, lang, rng, allowed)
                key = user_texts(messages)
                if key in avoid or (is_test and key in seen):
                    continue  # never a test prompt in train; test prompts unique where the world allows
                break
            if key is None or key in avoid:
                raise RuntimeError(f"chat tasks: could not draw a {split} {task} prompt unseen in the other "
                                   "split; the world is too small for these sizes (or heldout_fraction too small)")
            seen.add(key)
            if task == "arithmetic":
                seen.add((meta["a"], meta["b"], meta["op"]))
            out.append(ChatExample(tuple(messages), task, lang, split, meta))
    return out


def generate_chat_tasks(world: World, cfg: ChatTasksConfig = ChatTasksConfig()) -> list[ChatExample]:
    """All chat examples, train first then test, each split shuffled. Deterministic in (world, cfg)."""
    _check(cfg, world)
    held_pairs, held_chars = heldout(world, cfg)
    test = _make_split(world, cfg, "test", cfg.n_test, held_pairs, held_chars, avoid=set())
    avoid = {user_texts(e.messages) for e in test}
    avoid |= {(e.meta["a"], e.meta["b"], e.meta["op"]) for e in test if e.task == "arithmetic"}
    train = _make_split(world, cfg, "train", cfg.n_train, held_pairs, held_chars, avoid=avoid)

    rng = random.Random(f"picochat-chat/{cfg.seed}/{world.seed}/flaws")
    n_flawed = round(cfg.imperfect_fraction * len(train))
    for i in sorted(rng.sample(range(len(train)), n_flawed)):
        e = train[i]
        flaw, text = make_flawed(e.messages[-1]["content"], e.task, e.lang, rng)
        messages = e.messages[:-1] + ({"role": "assistant", "content": text},)
        train[i] = ChatExample(messages, e.task, e.lang, e.split, e.meta, flaw)

    order_rng = random.Random(f"picochat-chat/{cfg.seed}/{world.seed}/order")
    order_rng.shuffle(train)
    order_rng.shuffle(test)
    return train + test


def summarize(examples: list[ChatExample]) -> dict:
    """Counts per split: {"train": {"n", "task": {...}, "lang": {...}, "imperfect": {...},
    "mean_answer_chars"}, "test": {...}}."""
    out = {}
    for split in ("train", "test"):
        ex = [e for e in examples if e.split == split]
        out[split] = {
            "n": len(ex),
            "task": dict(sorted(Counter(e.task for e in ex).items())),
            "lang": dict(sorted(Counter(e.lang for e in ex).items())),
            "imperfect": dict(sorted(Counter(e.imperfect for e in ex if e.imperfect).items())),
            "mean_answer_chars": round(sum(len(e.messages[-1]["content"]) for e in ex) / max(1, len(ex)), 1),
        }
    return out


def write_chat_tasks(out_dir: str | os.PathLike, world: World, cfg: ChatTasksConfig = ChatTasksConfig()) -> dict:
    """Write out_dir/chat_train.jsonl and out_dir/chat_test.jsonl (one ChatExample.to_json() per
    line, each file written atomically) and return `summarize(...)` of what was written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples = generate_chat_tasks(world, cfg)
    for split in ("train", "test"):
        path = out / f"chat_{split}.jsonl"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=out)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                for e in examples:
                    if e.split == split:
                        f.write(json.dumps(e.to_json(), ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return summarize(examples)


def read_chat_examples(path: str | os.PathLike) -> list[ChatExample]:
    """ChatExamples from a chat_train.jsonl / chat_test.jsonl written by write_chat_tasks."""
    path = Path(path)
    split = "test" if "test" in path.name else "train"
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(ChatExample.from_json(json.loads(line), split=split))
            except (KeyError, TypeError, json.JSONDecodeError) as e:
                raise ValueError(f"{path}:{lineno}: not a chat example written by write_chat_tasks ({e})") from e
    return out
