"""The label stage: sample K answers per prompt from the SFT model and rank them with the built-in
labeler (people rank on the labeling page of `picochat serve` instead)."""

from __future__ import annotations

import time
from pathlib import Path

from picochat.config import RunConfig
from picochat.core.precision import default_device, resolve_precision
from picochat.data.preferences import read_preferences
from picochat.feedback.autolabel import label_prompts, world_label_prompts
from picochat.layout import load_model_and_tokenizer, world_file
from picochat.world import GoldScorer, read_world


def run(cfg: RunConfig, out: Path, show_progress: bool) -> dict:
    t0 = time.perf_counter()
    device = default_device()
    model, tokenizer, _ = load_model_and_tokenizer(out / "sft", device)
    scorer = GoldScorer(read_world(world_file(out))[0])
    precision = resolve_precision("auto", device)
    lcfg = cfg.label
    summaries = {}
    splits = (("train", lcfg.n_prompts, "preferences.jsonl"), ("test", lcfg.n_test_prompts, "preferences_test.jsonl"))
    for split, n, name in splits:
        # the test split keeps the world's mix: it measures the reward model on the prompts it will meet
        task_mix = lcfg.task_mix if split == "train" else "natural"
        prompts = world_label_prompts(out / "world", split, n, lcfg.seed, task_mix=task_mix)
        mix = " (the task types in turn)" if task_mix == "even" else ""
        print(f"[label] ranking {lcfg.k} SFT answers to each of {len(prompts)} {split} prompts{mix} (built-in "
              f"labeler, flip_prob={lcfg.flip_prob})")
        summaries[split] = label_prompts(model, tokenizer, scorer, prompts, out / "label" / name, lcfg, precision,
                                         show_progress=show_progress)
    wall = time.perf_counter() - t0
    tokens = _sampled_tokens(tokenizer, [out / "label" / "preferences.jsonl", out / "label" / "preferences_test.jsonl"])
    return {"stage": "label", **summaries["train"], "test": summaries["test"], "tokens": tokens,
            "tokens_per_s": tokens / wall, "wall_s": wall}


def _sampled_tokens(tokenizer, files: list[Path]) -> int:
    """Tokens of all the answers in the label files: what the labeling stage sampled."""
    records, _ = read_preferences(files, skip_invalid=True)
    return sum(len(tokenizer.encode(r)) for record in records for r in record.responses)
