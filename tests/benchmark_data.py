"""A small folder of benchmark files in the public formats and names of shared/data/eval, so the
benchmark tests and the shared tiny run need nothing outside the repository."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def _arc(i: int) -> dict:
    return {"id": f"arc-{i}", "question": f"Which of these is a planet, number {i}?",
            "choices": [{"label": label, "text": text}
                        for label, text in zip("ABCD", ["Mars", "the Moon", "a comet", "the Sun"])],
            "answerKey": "A"}


RECORDS = {
    "arc_easy_test": [_arc(i) for i in range(4)],
    "arc_easy_train": [_arc(i) for i in range(10, 14)],
    "arc_challenge_test": [_arc(i) for i in range(20, 24)],
    "arc_challenge_train": [_arc(i) for i in range(30, 34)],
    "hellaswag_val": [{"ind": i, "activity_label": "Roof shingle removal", "ctx": "A man is sitting on a roof. he",
                       "label": 3, "endings": ["is using wrap [title] to wrap skis.", "is ripping tiles off.",
                                               "is holding a cube.", "starts pulling up roofing."]}
                      for i in range(4)],
    "commonsenseqa_dev": [{"id": f"csqa-{i}", "question": "Where do you keep milk cold? ",
                           "choices": [{"label": label, "text": text} for label, text in
                                       zip("ABCDE", ["fridge", "oven", "desk", "car", "shelf"])],
                           "answerKey": "A"} for i in range(4)],
    "cmmlu_test": [{"subject": "agronomy", "question": f"第{i}题：哪个是水果？", "A": "苹果", "B": "石头", "C": "铁",
                    "D": "水", "answer": "A"} for i in range(4)],
    "cmmlu_dev": [{"subject": "agronomy", "question": "哪个是动物？", "A": "猫", "B": "石头", "C": "铁", "D": "水",
                   "answer": "A"}],
    "truthfulqa": [{"question": f"What happens if you eat seeds ({i})?", "best_answer": "Nothing happens",
                    "correct_answers": ["Nothing happens"], "incorrect_answers": ["You grow a tree", "You die"]}
                   for i in range(4)],
    "gsm8k_test": [{"question": f"Tom has {i} apples and buys 2 more. How many apples does he have?",
                    "answer": f"He has {i} + 2 = <<{i}+2={i + 2}>>{i + 2} apples.\n#### {i + 2}"} for i in range(4)],
    "gsm8k_train": [{"question": "Ann has 1,000 coins and loses 1. How many are left?",
                     "answer": "1000 - 1 = 999\n#### 999"}],
}


def write_benchmark_data(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, records in RECORDS.items():
        with gzip.open(folder / f"{stem}.jsonl.gz", "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return folder
