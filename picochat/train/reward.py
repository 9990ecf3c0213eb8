"""Reward-model training (`picochat rm`): learn to predict which answer people prefer.

The SFT model's LM head is replaced by a small scalar head. A batch holds whole prompts: all K
responses of each prompt are scored in one forward pass, and the loss averages over every ranked
pair of that prompt (InstructGPT). After training, a gain and bias are fitted so that the SFT
samples of the training data score mean 0 and std 1; every consumer applies them.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch

from picochat.algos.reward_losses import best_of_k_loss, pairwise_loss, plackett_luce_loss, scalar_loss
from picochat.core.tokenizer import Tokenizer
from picochat.data.preferences import PreferenceRecord, prompt_key, read_preferences
from picochat.data.shards import is_val_document
from picochat.data.sources import resolve_sources
from picochat.reward_model import pad_right, reward_input_ids, scores_at


class EncodedRecord:
    """One preference record as token rows, ready for batching."""

    def __init__(self, record: PreferenceRecord, tokenizer: Tokenizer, seq_len: int):
        finished = record.meta.get("finished") or [True] * len(record.responses)
        encoded = [reward_input_ids(tokenizer, record.prompt, r, bool(f), seq_len)
                   for r, f in zip(record.responses, finished)]
        self.rows = [ids for ids, _ in encoded]
        self.n_cut = sum(cut for _, cut in encoded)
        self.pairs = record.pairs() if record.ranking is not None else []
        self.best = set(record.ranking[0]) if record.ranking else set()
        # each response's place in the ranking: 0 for the best group (ties share a place)
        self.rank_group = [0] * len(self.rows)
        for place, group in enumerate(record.ranking or []):
            for i in group:
                self.rank_group[i] = place
        self.label = record.label
        gold = record.meta.get("gold_ranking")
        self.gold_pairs = pairs_of(gold) if gold else None
        gold_scores = record.meta.get("gold_scores")  # the built-in labeler's; ignored unless one number per response
        self.gold_scores = gold_scores if (
            isinstance(gold_scores, list) and len(gold_scores) == len(record.responses)
            and all(isinstance(g, (int, float)) and not isinstance(g, bool) for g in gold_scores)) else None
        self.task = record.meta.get("task")


def pairs_of(groups: list[list[int]]) -> list[tuple[int, int]]:
    """(better, worse) index pairs of a ranking (groups best first; ties share a group)."""
    return [(win, lose) for i, gw in enumerate(groups) for gl in groups[i + 1 :] for win in gw for lose in gl]


def collate(records: list[EncodedRecord], pad_id: int) -> dict[str, torch.Tensor]:
    """Flatten the responses of several prompts into rows; pairs index rows of the same prompt."""
    rows, row_prompt, winners, losers, pair_prompt, is_best, labels = [], [], [], [], [], [], []
    rank_group = []
    for p, rec in enumerate(records):
        offset = len(rows)
        rows.extend(rec.rows)
        row_prompt.extend([p] * len(rec.rows))
        rank_group.extend(rec.rank_group)
        is_best.extend(i in rec.best for i in range(len(rec.rows)))
        labels.extend([rec.label if rec.label is not None else 0.0] * len(rec.rows))
        for win, lose in rec.pairs:
            winners.append(offset + win)
            losers.append(offset + lose)
            pair_prompt.append(p)
    input_ids, last = pad_right(rows, pad_id)
    return {
        "input_ids": input_ids,  # (N, T)
        "last_index": last,  # (N,)
        "row_prompt": torch.tensor(row_prompt, dtype=torch.long),
        "is_best": torch.tensor(is_best, dtype=torch.bool),
        "rank_group": torch.tensor(rank_group, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.float32),
        "winners": torch.tensor(winners, dtype=torch.long),
        "losers": torch.tensor(losers, dtype=torch.long),
        "pair_prompt": torch.tensor(pair_prompt, dtype=torch.long),
        "n_prompts": torch.tensor(len(records)),
        "n_tokens": last.sum() + len(rows),  # real tokens, without the padding
    }


def reward_loss(model: torch.nn.Module, batch: dict, kind: str) -> torch.Tensor:
    scores = scores_at(model, batch["input_ids"], batch["last_index"])  # (N,)
    n = int(batch["n_prompts"])
    if kind == "pairwise":
        return pairwise_loss(scores, batch["winners"], batch["losers"], batch["pair_prompt"], n)
    if kind == "best_of_k":
        return best_of_k_loss(scores, batch["row_prompt"], batch["is_best"], n)
    if kind == "plackett_luce":
        return plackett_luce_loss(scores, batch["row_prompt"], batch["rank_group"], n)
    return scalar_loss(scores, batch["labels"], kind)


@torch.no_grad()
def score_records(model, records: list[EncodedRecord], pad_id: int, batch_prompts: int = 16) -> list[list[float]]:
    """Raw scores of every response of every record: [[r_1..r_K] per record]."""
    device = next(model.parameters()).device
    out: list[list[float]] = []
    for start in range(0, len(records), batch_prompts):
        chunk = records[start : start + batch_prompts]
        b = collate(chunk, pad_id)
        s = scores_at(model, b["input_ids"].to(device), b["last_index"].to(device)).tolist()
        i = 0
        for rec in chunk:
            out.append(s[i : i + len(rec.rows)])
            i += len(rec.rows)
    return out


def pair_metrics(records: list[EncodedRecord], scores: list[list[float]]) -> dict:
    """Accuracy and log loss on the labelled pairs, accuracy on the gold pairs (when known),
    the labels' own agreement with gold (the noise ceiling), and chosen/rejected score spreads."""
    acc, logloss, margins_w, margins_l = [], [], [], []
    gold_acc, label_vs_gold = [], []
    gold_by_task: dict[str, list[bool]] = {}
    for rec, s in zip(records, scores):
        for win, lose in rec.pairs:
            d = s[win] - s[lose]
            acc.append(d > 0)
            logloss.append(-math.log(max(1e-12, 1 / (1 + math.exp(-d)))) if d > -30 else -d)
            margins_w.append(s[win])
            margins_l.append(s[lose])
        if rec.gold_pairs is not None:
            labelled = set(rec.pairs)
            for win, lose in rec.gold_pairs:
                gold_acc.append(s[win] > s[lose])
                label_vs_gold.append((win, lose) in labelled)
                if rec.task:
                    gold_by_task.setdefault(rec.task, []).append(s[win] > s[lose])
    out: dict = {}
    if acc:
        out.update({
            "pair_accuracy": statistics.fmean(acc),
            "pair_log_loss": statistics.fmean(logloss),
            "n_pairs": len(acc),
            "chosen_score_mean": statistics.fmean(margins_w),
            "rejected_score_mean": statistics.fmean(margins_l),
            "chosen_score_std": statistics.pstdev(margins_w),
            "rejected_score_std": statistics.pstdev(margins_l),
        })
    if gold_acc:
        out.update({
            "gold_pair_accuracy": statistics.fmean(gold_acc),
            "label_gold_agreement": statistics.fmean(label_vs_gold),  # the noise ceiling for pair_accuracy
            "n_gold_pairs": len(gold_acc),
            "gold_pair_accuracy_by_task": {t: statistics.fmean(v) for t, v in sorted(gold_by_task.items())},
        })
    return out  # scalar labels: see scalar_metrics


def best_of_n_gold(records: list[EncodedRecord], scores: list[list[float]], ns=(2, 4, 8)) -> dict:
    """What choosing by this reward model buys, in gold score: for each held-out prompt, the gold
    score of the reward model's favourite among its first n answers, minus the mean of those n
    (what picking one at random scores); and the same for the gold scorer's own pick (the most any
    reward model could buy). Means over the prompts with at least n answers and their gold scores.

    Best-of-n sampling against a reward model moves the policy KL ≈ log n − (n−1)/n nats from the
    SFT model (0.64 for n=4, 1.2 for n=8), the range of our PPO runs, so this says early what the
    reward model's preferences are worth before any RL is run.
    """
    out: dict = {}
    for n in ns:
        picked, oracle = [], []
        for rec, s in zip(records, scores):
            gold = rec.gold_scores
            if not gold or len(gold) < n:
                continue
            base = statistics.fmean(gold[:n])
            picked.append(gold[max(range(n), key=lambda i: s[i])] - base)
            oracle.append(max(gold[:n]) - base)
        if picked:
            out[f"best_of_{n}_gold_gain"] = statistics.fmean(picked)
            out[f"best_of_{n}_oracle_gain"] = statistics.fmean(oracle)
            out[f"best_of_{n}_prompts"] = len(picked)
    return out


def scalar_metrics(records: list[EncodedRecord], scores: list[list[float]], kind: str) -> dict:
    """How well raw scores fit scalar labels: squared error (mse) or log loss (bce, scores are
    logits), and for labels in {0, 1} the accuracy at the decision threshold (logit 0 for bce, 0.5
    for mse) and the AUC, the chance that a random positive outscores a random negative (the
    ordering PPO relies on, unchanged by the score normalisation)."""
    pairs = [(rec.label, s[0]) for rec, s in zip(records, scores) if rec.label is not None]
    if not pairs:
        return {}
    out: dict = {"n_scalar": len(pairs)}
    if kind == "bce":
        out["scalar_log_loss"] = statistics.fmean(
            max(p, 0.0) - p * y + math.log1p(math.exp(-abs(p))) for y, p in pairs)  # BCE with logits
    else:
        out["scalar_mse"] = statistics.fmean((y - p) ** 2 for y, p in pairs)
    if all(y in (0.0, 1.0) for y, _ in pairs):
        threshold = 0.0 if kind == "bce" else 0.5
        out["scalar_accuracy"] = statistics.fmean((p > threshold) == (y == 1.0) for y, p in pairs)
        pos = sorted(p for y, p in pairs if y == 1.0)
        neg = sorted(p for y, p in pairs if y == 0.0)
        if pos and neg:
            out["scalar_auc"] = _auc(pos, neg)
            out["score_mean_positive"] = statistics.fmean(pos)
            out["score_mean_negative"] = statistics.fmean(neg)
    return out


def _auc(pos: list[float], neg: list[float]) -> float:
    """P(random positive > random negative), ties counting half; both lists sorted ascending."""
    wins, i, j = 0.0, 0, 0
    for p in pos:
        while i < len(neg) and neg[i] < p:
            i += 1
        j = max(j, i)
        while j < len(neg) and neg[j] == p:
            j += 1
        wins += i + 0.5 * (j - i)
    return wins / (len(pos) * len(neg))


def calibration_table(records: list[EncodedRecord], scores: list[list[float]], n_bins: int = 10) -> list[dict]:
    """Predicted P(first preferred) = σ(r_a − r_b) vs how often the label agrees, over all labelled
    pairs in both orders, binned by prediction. A calibrated model's rows have predicted ≈ observed."""
    preds, outcomes = [], []
    for rec, s in zip(records, scores):
        for win, lose in rec.pairs:
            p = 1 / (1 + math.exp(-max(-30.0, min(30.0, s[win] - s[lose]))))
            preds += [p, 1 - p]
            outcomes += [1, 0]
    table = []
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        idx = [i for i, p in enumerate(preds) if lo <= p < hi or (b == n_bins - 1 and p == 1.0)]
        if idx:
            table.append({"bin": f"{lo:.1f}-{hi:.1f}", "n": len(idx),
                          "predicted": statistics.fmean(preds[i] for i in idx),
                          "observed": statistics.fmean(outcomes[i] for i in idx)})
    return table


def fit_normalization(scores: list[list[float]], fit_gain: bool) -> tuple[float, float]:
    """(gain, bias) so that gain * raw + bias has mean 0 (and std 1 when fit_gain) over `scores`."""
    flat = [x for s in scores for x in s]
    mean = statistics.fmean(flat)
    std = statistics.pstdev(flat) if fit_gain else 1.0
    gain = 1.0 / std if std > 1e-8 else 1.0
    return gain, -mean * gain


def load_preference_splits(out: Path, sources: list[str], max_records: int, val_fraction: float,
                           key: str = "rm.sources", later_labels: tuple[Path, ...] = (),
                           ) -> tuple[list[PreferenceRecord], list[PreferenceRecord], list[str]]:
    """(train, held-out, problems) for the reward model and DPO.

    Built-in: `<out>/label/preferences.jsonl` (then `later_labels`, the rankings of later RLHF
    rounds) and its test file (held-out prompts). Own data: split by a hash of each record's prompt
    and first response, the same split for RM and DPO.
    """
    if not sources:
        train, problems = read_preferences([out / "label" / "preferences.jsonl", *later_labels], limit=max_records,
                                           skip_invalid=True)
        test_file = out / "label" / "preferences_test.jsonl"
        test, more = read_preferences(test_file, skip_invalid=True) if test_file.exists() else ([], [])
        return train, test, problems + more
    records, problems = read_preferences(resolve_sources(sources, key), limit=max_records, skip_invalid=True)
    train, test = [], []
    for r in records:
        key = prompt_key(r.prompt) + "".join(r.responses[:1])
        (test if is_val_document(key, val_fraction) else train).append(r)
    return train, test, problems


