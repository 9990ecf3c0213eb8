"""The label stage: sample K answers per prompt from the SFT model and rank them with the built-in
labeler (people rank on the labeling page of `picochat serve` instead).

On a CPU with two threads to split (`labels_side_by_side`) two processes
label at once, one thread each: this one every even batch, a child process every odd one, each
into its own file, joined in the prompts' order at the end. Every batch is sampled with its own
seed, so the file is the one a single process on one thread writes; only the time it takes
changes (bench/README.md).
"""

from __future__ import annotations

import time
from pathlib import Path

from picochat.config import RunConfig
from picochat.core.checkpoint import TOKENIZER_FILE
from picochat.core.child_process import ChildProcess, log_file, room_for_a_child
from picochat.core.precision import default_device, resolve_precision
from picochat.core.threads import torch_threads
from picochat.core.tokenizer import Tokenizer
from picochat.data.preferences import PreferenceRecord, prompt_key
from picochat.feedback.autolabel import (
    label_prompts,
    labeled_records,
    merge_label_files,
    summarize_labels,
    world_label_prompts,
)
from picochat.layout import load_model_and_tokenizer, resolve_model, world_file
from picochat.world import GoldScorer, read_world

SPLITS = ("train", "test")
FILES = {"train": "preferences.jsonl", "test": "preferences_test.jsonl"}
PROCESSES = 2  # labeling side by side: this process and one child
# Two processes of one thread each against one of two threads: the demo's labeling took 163 s
# against 205 s (medians of two alternating windows, `python -m bench.side_by_side --parts label`).
# The run's plan divides the stage's estimate by this.
LABEL_SPLIT_SPEEDUP = 1.26


def labels_side_by_side(cfg: RunConfig) -> bool:
    """Two processes label (`cfg.side_by_side`, and `room_for_a_child()`)."""
    return cfg.side_by_side and room_for_a_child()


def run(cfg: RunConfig, out: Path, show_progress: bool) -> dict:
    t0 = time.perf_counter()
    label_dir = out / "label"
    prompts = {split: split_prompts(cfg, out, split) for split in SPLITS}
    for split in SPLITS:
        mix = " (the task types in turn)" if split == "train" and cfg.label.task_mix == "even" else ""
        print(f"[label] ranking {cfg.label.k} SFT answers to each of {len(prompts[split])} {split} prompts{mix} "
              f"(built-in labeler, flip_prob={cfg.label.flip_prob})")
    before = {split: _labeled_count(label_dir / FILES[split], prompts[split]) for split in SPLITS}
    if labels_side_by_side(cfg):
        _label_side_by_side(cfg, out, show_progress)
    else:
        label_share(cfg, out, (0, 1), show_progress)
    summaries, every_record = {}, []
    for split in SPLITS:
        final = label_dir / FILES[split]
        merged = merge_label_files(final, [part_file(final, i) for i in range(PROCESSES)])
        every_record += merged
        wanted = {prompt_key(messages) for messages, _ in prompts[split]}
        labeled = [r for r in merged if prompt_key(r.prompt) in wanted]
        summaries[split] = {**summarize_labels(labeled), "n_new": len(labeled) - before[split], "k": cfg.label.k}
    wall = time.perf_counter() - t0
    tokens = _sampled_tokens(out, every_record)
    return {"stage": "label", **summaries["train"], "test": summaries["test"], "seconds": round(wall, 2),
            "tokens": tokens, "tokens_per_s": tokens / wall, "wall_s": wall}


def _label_side_by_side(cfg: RunConfig, out: Path, show_progress: bool) -> None:
    log = log_file(out, "label")
    print(f"[label] two processes, one thread each: a child labels every other batch (its output in {log}; "
          f"side_by_side=false labels in this process alone)")
    child = ChildProcess("label", log, label_share, cfg, out, (1, PROCESSES), False).start()
    try:
        with torch_threads(1):
            label_share(cfg, out, (0, PROCESSES), show_progress)
    except KeyboardInterrupt:
        child.stop(grace_s=60)  # what it labeled is on disk, record by record
        raise
    except BaseException:
        child.stop()
        raise
    child.finish()


def split_prompts(cfg: RunConfig, out: Path, split: str) -> list[tuple[list[dict], dict]]:
    """The prompts of one split, in the order that fixes their batches and seeds. The test split
    keeps the world's mix: it measures the reward model on the prompts it will meet."""
    lcfg = cfg.label
    n = lcfg.n_prompts if split == "train" else lcfg.n_test_prompts
    return world_label_prompts(out / "world", split, n, lcfg.seed, task_mix=lcfg.task_mix if split == "train"
                               else "natural")


def part_file(final: Path, part: int) -> Path:
    """Where process `part` of a side-by-side labeling writes: label/preferences.part1.jsonl."""
    return final.with_name(f"{final.name.removesuffix('.jsonl')}.part{part}.jsonl")


def label_share(cfg: RunConfig, out: Path, share: tuple[int, int], show_progress: bool) -> None:
    """Label batch share[0], share[0] + share[1], ... of both splits: into the stage's files when
    this process labels alone, else into its part files. Prompts in any of them count as done."""
    part, n_parts = share
    device = default_device()
    model, tokenizer, _ = load_model_and_tokenizer(out / "sft", device)
    scorer = GoldScorer(read_world(world_file(out))[0])
    precision = resolve_precision("auto", device)
    for split in SPLITS:
        final = out / "label" / FILES[split]
        every_file = [final, *(part_file(final, i) for i in range(PROCESSES))]
        own = final if n_parts == 1 else part_file(final, part)
        summary = label_prompts(model, tokenizer, scorer, split_prompts(cfg, out, split), own, cfg.label, precision,
                                show_progress=show_progress, share=share,
                                done_in=tuple(f for f in every_file if f != own))
        if n_parts > 1:
            print(f"[label] process {part + 1} of {n_parts} labeled {summary['n_new']} {split} prompts "
                  f"({summary['seconds']:.0f} s) into {own}")


def _labeled_count(final: Path, prompts: list[tuple[list[dict], dict]]) -> int:
    """Prompts of this list already labeled in the stage's file or its parts (a resumed stage)."""
    wanted = {prompt_key(messages) for messages, _ in prompts}
    return len(labeled_records([final, *(part_file(final, i) for i in range(PROCESSES))]).keys() & wanted)


def _sampled_tokens(out: Path, records: list[PreferenceRecord]) -> int:
    """Tokens of all the answers in the label files' records: what the labeling stage sampled."""
    tokenizer = Tokenizer.load(resolve_model(out / "sft") / TOKENIZER_FILE)
    return sum(len(tokenizer.encode(r)) for record in records for r in record.responses)
