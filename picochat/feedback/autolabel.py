"""The built-in labeler: a simulated annotator that ranks K answers of the SFT model per prompt.

InstructGPT step 2 asks people to rank K answers sampled from the SFT model for the same prompt.
People disagree with each other (InstructGPT measured 72.6% inter-labeler agreement), so the
simulated annotator is noisy on purpose: it compares every pair of answers by their gold score,
calls a pair within `tie_margin` a tie ("can't tell"), and otherwise prefers the better answer
except with probability `flip_prob`, independently per pair. The K answers are then ranked by
their number of pairwise wins (Copeland; a tie is half a win each) and equal win counts form a
tied group, so the ranking a reward model trains on is consistent even when the pairwise
decisions are not (a cycle a > b > c > a becomes one tied group).

    prompts = world_label_prompts("runs/world", "train", n=1500, seed=0)
    summary = label_prompts(model, tok, GoldScorer(world), prompts, "prefs.jsonl", LabelConfig(), "auto")

Labeling is resumable and reproducible: prompts are cut into fixed batches by their index, each
batch is sampled with a seed derived from its first index, and each prompt's annotator noise is
seeded from its index, so a killed run that is started again writes exactly what an
uninterrupted run would have written, and never labels a prompt twice.
"""

from __future__ import annotations

import random
import statistics
import time
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path

from tqdm.auto import tqdm

from picochat.config import LABEL_TASK_MIXES, LabelConfig
from picochat.core.chat import render_prompt
from picochat.core.generate import SamplingConfig
from picochat.data.preferences import (
    PreferenceRecord,
    append_record,
    prompt_key,
    read_preferences,
    repair_torn_tail,
    write_records,
)
from picochat.eval.gold_eval import answer_prompts
from picochat.world.tasks import read_chat_examples

# ----------------------------------------------------------------------------------------------
# The simulated annotator (pure functions).

def _copeland(gold_scores: list[float], flip_prob: float, tie_margin: float,
              rng: random.Random | None) -> list[list[int]]:
    wins = [0.0] * len(gold_scores)
    for i, j in combinations(range(len(gold_scores)), 2):
        diff = gold_scores[i] - gold_scores[j]
        if abs(diff) <= tie_margin:  # can't tell: half a win each
            wins[i] += 0.5
            wins[j] += 0.5
            continue
        better, worse = (i, j) if diff > 0 else (j, i)
        if rng is not None and rng.random() < flip_prob:
            better, worse = worse, better
        wins[better] += 1.0
    # Win counts are multiples of 0.5, so equality is exact.
    groups: dict[float, list[int]] = {}
    for i, w in enumerate(wins):
        groups.setdefault(w, []).append(i)
    return [groups[w] for w in sorted(groups, reverse=True)]


def noisy_ranking(gold_scores: list[float], flip_prob: float, tie_margin: float,
                  rng: random.Random) -> list[list[int]]:
    """The simulated annotator's ranking of answers with these gold scores: groups best -> worst,
    answers that tie in one group (indices ascending within a group).

    Every pair within `tie_margin` is a tie; every other pair is decided for the better answer,
    except with probability `flip_prob` for the worse one (one rng draw per decided pair, in
    (i, j) order). Answers are ranked by pairwise wins, ties counting half.
    """
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
    return _copeland(list(gold_scores), flip_prob, tie_margin, rng)


def gold_ranking(gold_scores: list[float], tie_margin: float) -> list[list[int]]:
    """The noiseless ranking (the annotator with flip_prob=0). With tie_margin=0 it is exactly the
    gold order with equal scores grouped."""
    return _copeland(list(gold_scores), 0.0, tie_margin, None)


def pair_agreement(ranking: list[list[int]], reference: list[list[int]]) -> tuple[int, int]:
    """(agreeing, total) over the pairs that `reference` orders (not tied there): a pair agrees
    when `ranking` orders it the same way (a reversed or a newly tied pair does not agree)."""
    pos = {i: g for g, group in enumerate(ranking) for i in group}
    ref = {i: g for g, group in enumerate(reference) for i in group}
    agree = total = 0
    for i, j in combinations(sorted(ref), 2):
        if ref[i] == ref[j]:
            continue
        total += 1
        agree += (pos[i] - pos[j]) * (ref[i] - ref[j]) > 0
    return agree, total


def n_tied_pairs(ranking: list[list[int]]) -> int:
    """Pairs inside one tied group: they give the reward model no (winner, loser) pair."""
    return sum(len(g) * (len(g) - 1) // 2 for g in ranking)


# ----------------------------------------------------------------------------------------------
# Labeling loop.

def _check(cfg: LabelConfig) -> None:
    if not 2 <= cfg.k <= 9:
        raise ValueError(f"label.k must be in 2..9 (answers ranked per prompt), got {cfg.k}")
    if not 0.0 <= cfg.flip_prob <= 1.0:
        raise ValueError(f"label.flip_prob must be in [0, 1], got {cfg.flip_prob}")
    if cfg.tie_margin < 0:
        raise ValueError(f"label.tie_margin must be >= 0, got {cfg.tie_margin}")
    if cfg.batch_prompts < 1 or cfg.max_new_tokens < 1:
        raise ValueError("label.batch_prompts and label.max_new_tokens must be >= 1")


def _prompt_rng(seed: int, index: int) -> random.Random:
    # A str seed is hashed with SHA-512 by `random`, so it is the same in every process.
    return random.Random(f"autolabel:{seed}:{index}")


def label_prompts(
    model,
    tokenizer,
    scorer,
    prompts: list[tuple[list[dict], dict]],
    out_path,
    cfg: LabelConfig,
    precision: str,
    show_progress: bool = True,
    share: tuple[int, int] = (0, 1),
    done_in: tuple[Path, ...] = (),
) -> dict:
    """Sample cfg.k answers per prompt, rank them with the simulated annotator and append one
    K-wise PreferenceRecord per prompt to `out_path` (JSONL). Prompts already in the file are
    skipped (resume). Returns a summary over all of `prompts` that are labeled in the file.

    prompts: (messages, info) with info = {"task", "lang", ...}; their order fixes the batches and
    seeds, so pass the same list to resume (world_label_prompts gives the same list for the same
    arguments, and a longer n extends a shorter one).

    share=(i, n): label only every n-th batch, from the i-th (several processes label one list,
    each into its own file; `merge_label_files` joins them). done_in: other files whose prompts
    count as labeled (the other processes' files, for the progress bar and resume).
    """
    _check(cfg)
    part, n_parts = share
    if not 0 <= part < n_parts:
        raise ValueError(f"share must be (i, n) with 0 <= i < n, got {share}")
    t0 = time.perf_counter()
    out_path = Path(out_path)
    if not out_path.name.endswith(".jsonl"):
        raise ValueError(f"{out_path}: labels are written as JSON lines; name the file *.jsonl")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    repair_torn_tail(out_path)  # a killed run leaves at most a torn last line
    done = labeled_records([out_path, *done_in])

    keys = [prompt_key(messages) for messages, _ in prompts]
    first_index: dict[str, int] = {}
    for i, key in enumerate(keys):
        first_index.setdefault(key, i)  # a prompt listed twice is labeled once
    wanted = [i for i, key in enumerate(keys) if first_index[key] == i]
    n_done = sum(keys[i] in done for i in wanted)

    n_new = 0
    others = _LineCount(done_in)  # what the other processes add meanwhile, for the progress bar
    bar = tqdm(total=len(wanted), initial=n_done, desc="labeling", unit="prompt", disable=not show_progress)
    for start in range(part * cfg.batch_prompts, len(prompts), n_parts * cfg.batch_prompts):
        batch = range(start, min(start + cfg.batch_prompts, len(prompts)))
        todo = [i for i in batch if first_index[keys[i]] == i and keys[i] not in done]
        if not todo:
            continue
        # The whole batch is sampled even when only part of it is missing, so the random stream
        # (and therefore every answer) is the one an uninterrupted run sees.
        longest = max(len(render_prompt(tokenizer, prompts[i][0])) for i in batch)
        max_new = min(cfg.max_new_tokens, model.cfg.max_seq_len - longest)
        if max_new < 1:
            raise ValueError(
                f"a prompt in batch {start}..{batch[-1]} is {longest} tokens, leaving no room to answer "
                f"within the model's max_seq_len ({model.cfg.max_seq_len}); drop long prompts"
            )
        rows = [prompts[i][0] for i in batch for _ in range(cfg.k)]  # (len(batch) * k) prompts
        sampling = SamplingConfig(max_new_tokens=max_new, temperature=cfg.temperature, top_p=cfg.top_p,
                                  seed=cfg.seed + start)
        answers = answer_prompts(model, tokenizer, rows, sampling, precision, batch_size=len(rows))
        for i in todo:
            messages, info = prompts[i]
            offset = (i - start) * cfg.k
            texts = [text for text, _ in answers[offset: offset + cfg.k]]
            finished = [fin for _, fin in answers[offset: offset + cfg.k]]
            scores = [scorer.score(messages, text, finished=fin) for text, fin in zip(texts, finished)]
            ranking = noisy_ranking(scores, cfg.flip_prob, cfg.tie_margin, _prompt_rng(cfg.seed, i))
            record = PreferenceRecord(
                prompt=[dict(m) for m in messages], responses=texts, ranking=ranking,
                meta={"gold_scores": scores, "gold_ranking": gold_ranking(scores, cfg.tie_margin),
                      "finished": finished, "labeler": "auto", "flip_prob": cfg.flip_prob,
                      "tie_margin": cfg.tie_margin, "task": info.get("task"), "lang": info.get("lang"),
                      "index": i, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")},
            )
            append_record(out_path, record)
            done[keys[i]] = record
            n_new += 1
        bar.update(min(len(todo) + others.new_lines(), bar.total - bar.n))
    bar.close()

    labeled = [done[keys[i]] for i in wanted if keys[i] in done]
    summary = summarize_labels(labeled)
    summary.update({"n_new": n_new, "k": cfg.k, "seconds": round(time.perf_counter() - t0, 2)})
    return summary


def labeled_records(files: list[Path]) -> dict[str, PreferenceRecord]:
    """The records of these label files (those that exist), by prompt: the first of each prompt."""
    done: dict[str, PreferenceRecord] = {}
    for path in files:
        if path.exists() and path.stat().st_size > 0:
            records, _ = read_preferences(path, skip_invalid=True)
            for r in records:
                if r.prompt is not None:
                    done.setdefault(prompt_key(r.prompt), r)
    return done


class _LineCount:
    """How many lines files gained since the last call (records other processes appended)."""

    def __init__(self, files: tuple[Path, ...]):
        self.files = files
        self.seen = self._count()

    def _count(self) -> int:
        total = 0
        for path in self.files:
            if path.exists():
                with open(path, "rb") as f:
                    total += sum(1 for _ in f)
        return total

    def new_lines(self) -> int:
        now = self._count()
        added, self.seen = now - self.seen, now
        return max(0, added)


def merge_label_files(final: Path, parts: list[Path]) -> list[PreferenceRecord]:
    """Join the label files of several processes (`label_prompts(share=...)`) into `final`, one
    record per prompt in the prompts' order (meta "index"): the file one process labeling every
    batch writes. `final`'s own records are kept; the joined file replaces it atomically and then
    the parts are removed, so a run killed at any point loses nothing. Returns the records."""
    files = [final, *[p for p in parts if p.exists()]]
    for path in files[1:]:
        repair_torn_tail(path)
    records = list(labeled_records(files).values())
    if len(files) > 1:
        records.sort(key=lambda r: r.meta.get("index", 0))
        write_records(final, records)
        for path in files[1:]:
            path.unlink()
    return records


def summarize_labels(records: list[PreferenceRecord]) -> dict:
    """mean gold score, agreement of the rankings with the gold rankings, ties, from auto-labeled
    records (their meta holds gold_scores and gold_ranking)."""
    gold = [s for r in records for s in r.meta.get("gold_scores", [])]
    agree = total = tied = all_equal = 0
    for r in records:
        ref = r.meta.get("gold_ranking")
        if r.ranking is None or ref is None:
            continue
        a, t = pair_agreement(r.ranking, ref)
        agree, total = agree + a, total + t
        tied += n_tied_pairs(r.ranking)
        all_equal += len(ref) == 1
    return {
        "n_prompts": len(records),
        "mean_gold": statistics.fmean(gold) if gold else None,
        "pair_agreement_with_gold": agree / total if total else None,  # None: no ordered pair
        "n_tied_pairs": tied,
        "all_equal_prompts": all_equal,
    }


def world_label_prompts(world_dir, split: str, n: int, seed: int,
                        task_mix: str = "natural") -> list[tuple[list[dict], dict]]:
    """Prompts to label from world_dir/chat_train.jsonl (split="train") or chat_test.jsonl ("test"):
    de-duplicated by prompt, shuffled with `seed`, the first `n` (all when n <= 0 or n is larger).
    task_mix="even" takes the task types in turn (one prompt of each, then a second of each, …,
    a type that runs out drops out), so rare types get as many labels as common ones.
    The same arguments give the same list, and a larger n extends a smaller one."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if task_mix not in LABEL_TASK_MIXES:
        raise ValueError(f"task_mix must be one of {', '.join(LABEL_TASK_MIXES)}, got {task_mix!r}")
    path = Path(world_dir) / f"chat_{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: write the world's chat tasks first (write_chat_tasks)")
    seen: set[str] = set()
    out: list[tuple[list[dict], dict]] = []
    for e in read_chat_examples(path):
        messages = e.prompt()
        key = prompt_key(messages)
        if key in seen:
            continue
        seen.add(key)
        out.append((messages, {"task": e.task, "lang": e.lang}))
    random.Random(f"label-prompts:{split}:{seed}").shuffle(out)
    if task_mix == "even":
        out = _task_types_in_turn(out)
    return out[:n] if n > 0 else out


def _task_types_in_turn(prompts: list[tuple[list[dict], dict]]) -> list[tuple[list[dict], dict]]:
    """The same prompts reordered round-robin over their task types (types in sorted order, each
    type's prompts in their given order)."""
    by_task: dict[str, list] = {}
    for item in prompts:
        by_task.setdefault(str(item[1].get("task")), []).append(item)
    queues = [by_task[t] for t in sorted(by_task)]
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]
