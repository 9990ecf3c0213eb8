"""Direct Preference Optimization (`picochat dpo`; Rafailov et al. 2023): learn from rankings
without a reward model or sampling.

DPO shows that the policy maximising reward − β·KL(π || π_ref) defines its own reward,
r(x, y) = β (log π(y|x) − log π_ref(y|x)) up to a per-prompt constant, so a Bradley-Terry fit of
that *implicit reward* to the labelled pairs trains the policy directly:
    Δ    = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))
    loss = −log σ(β Δ)

Each K-wise ranking becomes its (winner, loser) pairs (ties dropped). A response row is the prompt
plus the response rendered like SFT; its log-probability is summed over the response tokens (the
content, and `<|im_end|>` only when the response finished). The reference is the frozen starting
model, so its log-probabilities are computed once before training and stored with the data; a
step runs only the policy, on chosen and rejected rows together (2B rows in one forward).

Options: `label_smoothing` ε > 0 is conservative DPO (cDPO), which assumes each label is flipped
with probability ε: loss = −(1−ε) log σ(βΔ) − ε log σ(−βΔ). `loss: ipo` is IPO (Azar et al. 2023),
(Δ − 1/(2β))², which regresses the margin to a finite target instead of pushing it to infinity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from picochat.algos.dpo import dpo_loss
from picochat.core import distributed
from picochat.core.batching import right_pad
from picochat.core.chat import render_chat
from picochat.core.distributed import rank_share
from picochat.core.precision import autocast
from picochat.core.tokenizer import Tokenizer
from picochat.data.preferences import PreferenceRecord
from picochat.eval.kl import sequence_logprobs
from picochat.train.reward import pairs_of

# ---------------------------------------------------------------------------------------------
# The loss


# ---------------------------------------------------------------------------------------------
# Data: response rows, the pairs between them, and their reference log-probs


def encode_response(tokenizer: Tokenizer, prompt: list[dict], response: str, finished: bool,
                    seq_len: int) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """(ids, response mask, was cut) for prompt + response, or None when no response token is left
    within seq_len + 1 ids (the model reads seq_len of them and predicts the next).

    The mask covers the final assistant message only (its content, and <|im_end|> when the
    response finished); earlier assistant turns of a multi-turn prompt are context.
    """
    ids, mask = render_chat(tokenizer, list(prompt) + [{"role": "assistant", "content": response}])
    n_prompt = len(render_chat(tokenizer, prompt)[0])  # messages are encoded one by one: a prefix
    n_tail = len(tokenizer.encode("\n")) + (0 if finished else 1)  # separator, and <|im_end|> if unfinished
    ids, mask = ids[:-n_tail], [0] * n_prompt + mask[n_prompt:-n_tail]
    cut = len(ids) > seq_len + 1
    ids, mask = ids[: seq_len + 1], mask[: seq_len + 1]
    if sum(mask[1:]) == 0:
        return None
    return np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=np.bool_), cut


@dataclass
class PairData:
    """Response rows of many prompts; pairs index rows of the same prompt."""

    rows: list[np.ndarray]  # token ids, one per (prompt, response)
    masks: list[np.ndarray]  # aligned with rows: 1 = response token
    pairs: np.ndarray  # (P, 2) row indices (chosen, rejected), from the labels
    gold_pairs: np.ndarray  # (G, 2) row indices (better, worse) by the gold ranking, where known
    record_ends: list[int]  # row index just past each record's rows
    ref_logps: np.ndarray | None = None  # (R,) reference log-probs, filled in once
    n_cut: int = 0  # rows cut to seq_len
    n_dropped_pairs: int = 0  # pairs with a response cut off entirely

    def head(self, n_records: int) -> PairData:
        """The first n_records records (rows, pairs and reference log-probs)."""
        n_records = max(0, min(n_records, len(self.record_ends)))
        end = self.record_ends[n_records - 1] if n_records else 0
        keep = lambda p: p[(p < end).all(axis=1)]  # noqa: E731
        return PairData(self.rows[:end], self.masks[:end], keep(self.pairs), keep(self.gold_pairs),
                        self.record_ends[:n_records],
                        None if self.ref_logps is None else self.ref_logps[:end])


def encode_preferences(records: list[PreferenceRecord], tokenizer: Tokenizer, seq_len: int) -> PairData:
    """Rows for every response of every ranked record that has a labelled or a gold pair left
    after truncation; scalar-label records (no ranking) are skipped."""
    rows, masks, pairs, gold_pairs, ends = [], [], [], [], []
    n_cut = n_dropped = 0
    for rec in records:
        if rec.ranking is None or rec.prompt is None:
            continue
        finished = rec.meta.get("finished") or [True] * len(rec.responses)
        encoded = [encode_response(tokenizer, rec.prompt, r, bool(f), seq_len)
                   for r, f in zip(rec.responses, finished)]
        index, offset = {}, len(rows)
        for i, e in enumerate(encoded):
            if e is not None:
                index[i] = offset + len(index)
        rec_pairs = [(index[win], index[lose]) for win, lose in rec.pairs() if win in index and lose in index]
        gold = rec.meta.get("gold_ranking")
        rec_gold = ([(index[win], index[lose]) for win, lose in pairs_of(gold) if win in index and lose in index]
                    if gold else [])
        if not rec_pairs and not rec_gold:
            continue
        n_dropped += len(rec.pairs()) - len(rec_pairs)
        for e in encoded:
            if e is not None:
                rows.append(e[0])
                masks.append(e[1])
                n_cut += e[2]
        pairs += rec_pairs
        gold_pairs += rec_gold
        ends.append(len(rows))
    as_pairs = lambda p: np.asarray(p, dtype=np.int64).reshape(-1, 2)  # noqa: E731
    return PairData(rows, masks, as_pairs(pairs), as_pairs(gold_pairs), ends, n_cut=n_cut, n_dropped_pairs=n_dropped)


@torch.no_grad()
def row_logprobs(model: torch.nn.Module, data: PairData, pad_id: int, precision: str,
                 batch_rows: int = 64) -> np.ndarray:
    """Sequence log-probs of every row of `data` under `model`: (R,) float32. Rows are batched by
    length, so little of the compute goes to padding."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(data.rows)), key=lambda i: len(data.rows[i]))
    out = np.zeros(len(data.rows), dtype=np.float32)
    for start in range(0, len(order), batch_rows):
        idx = order[start : start + batch_rows]
        ids = right_pad([data.rows[i] for i in idx], pad_id)  # (N, T)
        mask = right_pad([data.masks[i] for i in idx], False, np.bool_)  # (N, T)
        with autocast(precision, device):
            out[idx] = sequence_logprobs(model, ids.to(device), mask.to(device)).cpu().numpy()
    model.train(was_training)
    return out


def all_row_logprobs(model: torch.nn.Module, data: PairData, pad_id: int, precision: str,
                     rows: np.ndarray | None = None) -> np.ndarray:
    """`row_logprobs` of every row, or only of `rows` (the others are NaN, so a batch that read
    one would fail loudly); under torchrun each process scores every world_size-th of them with
    the unwrapped model and the results are summed back together, so every process has them all."""
    rank, world = distributed.rank(), distributed.world_size()
    wanted = np.arange(len(data.rows)) if rows is None else np.asarray(rows)
    mine = wanted[rank::world]
    share = PairData([data.rows[i] for i in mine], [data.masks[i] for i in mine], data.pairs[:0],
                     data.gold_pairs[:0], [])
    out = np.zeros(len(data.rows), dtype=np.float64)
    out[mine] = row_logprobs(model, share, pad_id, precision)
    if world > 1:
        out = distributed.all_reduce(torch.from_numpy(out)).numpy()
    result = np.full(len(data.rows), np.nan, dtype=np.float32)
    result[wanted] = out[wanted]
    return result


def drawn_pairs(n_pairs: int, batch_size: int, seed: int, step: int, micro: int, world_size: int = 1) -> np.ndarray:
    """The pair indices of every process's share of the batch of (step, micro): batch_size ×
    world_size draws, a pure function of its arguments (which makes resume exact)."""
    return np.random.default_rng([seed, step, micro]).integers(0, n_pairs, size=batch_size * world_size)


def rows_trained_on(data: PairData, batch_size: int, seed: int, steps: int, grad_accum_steps: int,
                    world_size: int = 1) -> np.ndarray:
    """Every row that the batches of `steps` steps will draw (sorted, unique): the rows whose
    reference log-probs training needs. 200 steps of 16 pairs read about a fifth of the tiny
    preset's 27,000 training rows, so scoring only those saves most of the reference pass."""
    draws = [drawn_pairs(len(data.pairs), batch_size, seed, step, micro, world_size)
             for step in range(steps + 1) for micro in range(grad_accum_steps)]  # + 1: the trainer's shape probe
    return np.unique(data.pairs[np.concatenate(draws)])


def dpo_batch(data: PairData, batch_size: int, pad_id: int, seed: int, step: int, micro: int,
              rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
    """`batch_size` random pairs, a pure function of (seed, step, micro) for exact resume; under
    torchrun, process `rank`'s share of the global batch of batch_size × world_size pairs.

    input_ids (2B, T): the chosen rows, then the rejected rows, right-padded together;
    loss_mask (2B, T); ref_logps (2B,) in the same order.
    """
    drawn = drawn_pairs(len(data.pairs), batch_size, seed, step, micro, world_size)
    pairs = data.pairs[rank_share(drawn, batch_size, rank)]  # (B, 2)
    idx = np.concatenate([pairs[:, 0], pairs[:, 1]])  # (2B,)
    ids = right_pad([data.rows[i] for i in idx], pad_id)  # (2B, T)
    mask = right_pad([data.masks[i] for i in idx], False, np.bool_)  # (2B, T)
    ref = data.ref_logps[idx]
    if np.isnan(ref).any():  # a row rows_trained_on did not list: the two must draw alike
        raise RuntimeError(f"DPO batch of step {step} reads a reference log-prob that was not computed: "
                           "rows_trained_on and dpo_batch disagree on the rows drawn")
    return {"input_ids": ids, "loss_mask": mask, "ref_logps": torch.from_numpy(ref)}


def dpo_batch_loss(model: torch.nn.Module, batch: dict, beta: float, label_smoothing: float = 0.0,
                   kind: str = "sigmoid") -> torch.Tensor:
    """One forward of the policy over chosen and rejected rows together, then the DPO loss."""
    logps = sequence_logprobs(model, batch["input_ids"], batch["loss_mask"])  # (2B,)
    ref = batch["ref_logps"]
    B = logps.shape[0] // 2
    loss, _ = dpo_loss(logps[:B], logps[B:], ref[:B], ref[B:], beta, label_smoothing, kind)
    return loss


def pair_metrics(data: PairData, policy_logps: np.ndarray, beta: float, label_smoothing: float = 0.0,
                 kind: str = "sigmoid") -> dict:
    """DPO loss and implicit-reward diagnostics on the labelled pairs; accuracy of the implicit
    reward on the gold pairs, and how often the labels themselves agree with gold (the ceiling)."""
    out: dict = {}
    pol, ref = torch.from_numpy(policy_logps).double(), torch.from_numpy(data.ref_logps).double()
    if len(data.pairs):
        win, lose = torch.from_numpy(data.pairs[:, 0]), torch.from_numpy(data.pairs[:, 1])
        loss, stats = dpo_loss(pol[win], pol[lose], ref[win], ref[lose], beta, label_smoothing, kind)
        out.update({"loss": loss.item(), **stats, "n_pairs": len(data.pairs)})
    if len(data.gold_pairs):
        reward = beta * (pol - ref)
        win, lose = torch.from_numpy(data.gold_pairs[:, 0]), torch.from_numpy(data.gold_pairs[:, 1])
        labelled = set(map(tuple, data.pairs.tolist()))
        out.update({
            "gold_reward_accuracy": (reward[win] > reward[lose]).double().mean().item(),
            "label_gold_agreement": float(np.mean([tuple(p) in labelled for p in data.gold_pairs.tolist()])),
            "n_gold_pairs": len(data.gold_pairs),
        })
    return out


# ---------------------------------------------------------------------------------------------
# The stage


