"""The benchmark tasks: where each set's file is, how a record becomes an item, and the prompts.

Every prompt is written as lm-evaluation-harness 0.4 writes it (the task YAMLs named below), so a
picochat score compares with the harness's on the same items:

- arc_easy, arc_challenge: "Question: {question}\\nAnswer:", the answer texts as choices (arc/).
- hellaswag: "{activity_label}: {context}" cleaned as the harness does, the endings as choices. The
  local copy has only the joined `ctx`, so the harness's capital letter at the start of `ctx_b` is
  lost (records that have `ctx_a`/`ctx_b`, as from `hf:Rowan/hellaswag`, get it).
- commonsense_qa: the question with its five options lettered, the letters as choices.
- cmmlu: the question with A-D, ending "答案：", the letters as choices. The harness adds a line
  naming the subject before it (from a table of subject names); picochat leaves it out.
- truthfulqa: the harness's six-question QA primer, then "Q: {question}\\nA:"; the choices are the
  best answer (correct) and the incorrect answers, one correct of several as in mc1. From the
  generation-format file (best_answer, incorrect_answers); records with `mc1_targets` use those.
- gsm8k: "Question: {question}\\nAnswer:", greedy generation until "Question:", the final number
  compared as `answers` describes.

Few-shot examples (`shots`) are the query followed by " " and the correct answer, joined by blank
lines, drawn with a fixed seed from the task's few-shot file (its train or dev split), or from
the evaluated file without the item itself where the set has no other split (HellaSwag,
CommonsenseQA, TruthfulQA).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from picochat.data.readers import CorpusError, iter_json_lines
from picochat.data.sources import resolve_source
from picochat.eval.benchmarks.answers import letters, reference_answer
from picochat.eval.benchmarks.items import ChoiceItem, GenerationItem

Item = ChoiceItem | GenerationItem

TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
FEWSHOT_SEED = 1234

QA_PRIMER = (  # TruthfulQA's prompt (Lin et al. 2021, "QA prompt"), as the harness uses it
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)


class RecordError(ValueError):
    """A record lacks a field or has one of the wrong shape; the loader adds file and line."""


def _field(record: dict, *names: str):
    for name in names:
        if name in record:
            return record[name]
    raise RecordError(f"missing field {names[0]!r}")


def _text(record: dict, *names: str) -> str:
    value = _field(record, *names)
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"field {names[0]!r} must be a non-empty string, got {value!r}")
    return value


def _labelled_choices(record: dict) -> tuple[list[str], list[str]]:
    """ARC/CommonsenseQA choices, as a list of {"label", "text"} (local copies) or as
    {"label": [...], "text": [...]} (the Hub's)."""
    choices = _field(record, "choices")
    if isinstance(choices, dict):
        labels, texts = choices.get("label"), choices.get("text")
    elif isinstance(choices, list) and all(isinstance(c, dict) for c in choices):
        labels, texts = [c.get("label") for c in choices], [c.get("text") for c in choices]
    else:
        raise RecordError(f"'choices' must be a list of {{label, text}} objects, got {choices!r:.80}")
    if not labels or len(labels) != len(texts) or not all(isinstance(t, str) for t in texts + labels):
        raise RecordError("'choices' needs a label and a text for every choice")
    return [str(label) for label in labels], texts


def _gold_index(labels: list[str], key) -> int:
    if str(key) not in labels:
        raise RecordError(f"answerKey {key!r} is not one of the choice labels {labels}")
    return labels.index(str(key))


def parse_arc(task: str, record: dict, item_id: str) -> ChoiceItem:
    question = _text(record, "question")
    labels, texts = _labelled_choices(record)
    return ChoiceItem(task, item_id, f"Question: {question}\nAnswer:", tuple(texts),
                      _gold_index(labels, _field(record, "answerKey")), question, tuple(texts))


def _hellaswag_clean(text: str) -> str:
    """WikiHow artifacts out, as the harness's hellaswag/utils.py preprocess does."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def parse_hellaswag(task: str, record: dict, item_id: str) -> ChoiceItem:
    if "ctx_a" in record:
        context = f"{record['ctx_a']} {str(record.get('ctx_b', '')).capitalize()}"
    else:
        context = _text(record, "ctx")
    query = _hellaswag_clean(f"{_text(record, 'activity_label')}: {context}")
    endings = _field(record, "endings")
    if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) for e in endings):
        raise RecordError("'endings' must be a list of at least two strings")
    choices = tuple(_hellaswag_clean(e) for e in endings)
    try:
        gold = int(_field(record, "label"))
    except (TypeError, ValueError):
        raise RecordError(f"'label' must be an ending's index, got {record.get('label')!r}") from None
    if not 0 <= gold < len(choices):
        raise RecordError(f"'label' {gold} is out of range for {len(choices)} endings")
    return ChoiceItem(task, item_id, query, choices, gold, query, choices)


def _lettered(question: str, options: list[str]) -> str:
    return question + "".join(f"\n{letter}. {option}" for letter, option in zip(letters(len(options)), options))


def parse_commonsense_qa(task: str, record: dict, item_id: str) -> ChoiceItem:
    question = _text(record, "question").strip()
    labels, texts = _labelled_choices(record)
    gold = _gold_index(labels, _field(record, "answerKey"))
    return ChoiceItem(task, item_id, _lettered(f"Question: {question}", texts) + "\nAnswer:",
                      tuple(letters(len(texts))), gold, question, tuple(texts))


def parse_cmmlu(task: str, record: dict, item_id: str) -> ChoiceItem:
    question = _text(record, "question", "Question").strip()
    options = [_text(record, letter) for letter in "ABCD"]
    answer = _field(record, "answer", "Answer")
    if answer not in ("A", "B", "C", "D"):
        raise RecordError(f"'answer' must be one of A, B, C, D, got {answer!r}")
    return ChoiceItem(task, item_id, _lettered(question, options) + "\n答案：", tuple("ABCD"),
                      "ABCD".index(answer), question, tuple(options))


def parse_truthfulqa(task: str, record: dict, item_id: str) -> ChoiceItem:
    question = _text(record, "question")
    if "mc1_targets" in record:
        targets = record["mc1_targets"]
        options, labels = list(targets["choices"]), list(targets["labels"])
        gold = labels.index(1)
    else:
        incorrect = _field(record, "incorrect_answers")
        if not isinstance(incorrect, list) or not incorrect:
            raise RecordError("'incorrect_answers' must be a non-empty list")
        options, gold = [_text(record, "best_answer"), *incorrect], 0
    return ChoiceItem(task, item_id, f"{QA_PRIMER}\n\nQ: {question}\nA:", tuple(options), gold, question,
                      tuple(options))


def parse_gsm8k(task: str, record: dict, item_id: str) -> GenerationItem:
    question, solution = _text(record, "question"), _text(record, "answer")
    if "####" not in solution:
        raise RecordError("'answer' must end with '#### <number>' as GSM8K solutions do")
    return GenerationItem(task, item_id, f"Question: {question}\nAnswer:", solution, reference_answer(solution),
                          question)


@dataclass(frozen=True)
class Task:
    name: str
    file: str  # the evaluated split, as named in shared/data/eval (a .jsonl or .jsonl.gz)
    fewshot_file: str  # where few-shot examples come from; "" = the evaluated file, item left out
    parse: Callable[[str, dict, str], Item]
    language: str
    hf_source: str  # the Hub dataset to name in the error when no local copy is found
    shots_allowed: bool = True  # False: scored 0-shot whatever `shots` says (TruthfulQA's primer is its own)

    @property
    def generative(self) -> bool:
        return self.parse is parse_gsm8k


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("arc_easy", "arc_easy_test", "arc_easy_train", parse_arc, "en", "hf:allenai/ai2_arc?name=ARC-Easy&split=test"),
    Task("arc_challenge", "arc_challenge_test", "arc_challenge_train", parse_arc, "en",
         "hf:allenai/ai2_arc?name=ARC-Challenge&split=test"),
    Task("hellaswag", "hellaswag_val", "", parse_hellaswag, "en", "hf:Rowan/hellaswag?split=validation"),
    Task("commonsense_qa", "commonsenseqa_dev", "", parse_commonsense_qa, "en",
         "hf:tau/commonsense_qa?split=validation"),
    Task("cmmlu", "cmmlu_test", "cmmlu_dev", parse_cmmlu, "zh", "hf:haonan-li/cmmlu?name=agronomy&split=test"),
    Task("truthfulqa", "truthfulqa", "", parse_truthfulqa, "en",
         "hf:truthfulqa/truthful_qa?name=generation&split=validation", shots_allowed=False),
    Task("gsm8k", "gsm8k_test", "gsm8k_train", parse_gsm8k, "en", "hf:openai/gsm8k?name=main&split=test"),
)}


def task_names(spec: str | list[str]) -> list[str]:
    """"arc_easy,gsm8k" (or a list) -> the names, checked against TASKS."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown benchmark task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    return names


def find_task_file(task: Task, stem: str, data_dir: str, source: str = "") -> Path:
    """The local file of `stem` in `data_dir` (.jsonl or .jsonl.gz), or `source` (a path or `hf:`)."""
    if source:
        return resolve_source(source, f"eval.sources.{task.name}")
    if not data_dir:
        raise FileNotFoundError(
            f"benchmark {task.name}: no data folder; set eval.data_dir (picochat eval --data-dir DIR) to a folder "
            f"holding {stem}.jsonl.gz, or eval.sources.{task.name}={task.hf_source}")
    for suffix in (".jsonl.gz", ".jsonl"):
        path = Path(data_dir) / f"{stem}{suffix}"
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"benchmark {task.name}: {Path(data_dir) / (stem + '.jsonl.gz')} not found; set eval.data_dir "
        f"(picochat eval --data-dir DIR) to a folder holding it, or eval.sources.{task.name}={task.hf_source}")


def read_items(task: Task, path: Path, limit: int = 0) -> list[Item]:
    """The items of one file, in file order, the first `limit` (0 = all). A malformed line raises
    CorpusError naming the file and the line."""
    items: list[Item] = []
    for lineno, record in iter_json_lines(path, expected="a record of the public " + task.name + " format"):
        if not isinstance(record, dict):
            raise CorpusError(path, f"expected a JSON object, got {type(record).__name__}", lineno)
        item_id = str(record.get("id", record.get("ind", f"{path.name}:{lineno}")))
        try:
            items.append(task.parse(task.name, record, item_id))
        except (RecordError, KeyError, TypeError, ValueError) as e:
            raise CorpusError(path, f"not a {task.name} record: {e}", lineno) from None
        if limit and len(items) >= limit:
            break
    if not items:
        raise CorpusError(path, f"no {task.name} items in the file")
    return items


def with_shots(item: Item, pool: list[Item], shots: int, rng_seed: int = FEWSHOT_SEED) -> str:
    """The item's query after `shots` solved examples from `pool` (never the item itself)."""
    if shots == 0:
        return item.query
    candidates = [p for p in pool if p.item_id != item.item_id or p.query != item.query]
    rng = random.Random(f"{rng_seed}:{item.task}:{item.item_id}")
    examples = rng.sample(candidates, min(shots, len(candidates)))
    if not examples:  # no pool (TruthfulQA: its primer is its few-shot prompt)
        return item.query
    solved = [e.query + TARGET_DELIMITER + (e.target if isinstance(e, GenerationItem) else e.choices[e.gold])
              for e in examples]
    return FEWSHOT_DELIMITER.join(solved) + FEWSHOT_DELIMITER + item.query


@dataclass
class LoadedTask:
    task: Task
    items: list[Item]
    fewshot_pool: list[Item]
    source: Path


def load_task(name: str, data_dir: str, *, limit: int = 0, shots: int = 0, source: str = "",
              fewshot_pool_size: int = 2000) -> LoadedTask:
    """Read task `name`'s items (the first `limit`) and, for `shots` > 0, its few-shot pool."""
    task = TASKS[name]
    path = find_task_file(task, task.file, data_dir, source)
    items = read_items(task, path, limit)
    pool: list[Item] = []
    if shots and task.shots_allowed:  # TruthfulQA stays 0-shot after its primer, as in the harness
        if task.fewshot_file and not source:
            pool = read_items(task, find_task_file(task, task.fewshot_file, data_dir), fewshot_pool_size)
        else:
            pool = read_items(task, path, fewshot_pool_size)
    return LoadedTask(task, items, pool, path)

