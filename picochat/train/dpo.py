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

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from picochat.core import distributed
from picochat.core.chat import render_chat
from picochat.core.checkpoint import write_model_dir
from picochat.config import DPOConfig, RunConfig
from picochat.layout import load_model, model_location  # noqa: F401  (DPOConfig re-exported for callers)
from picochat.data.preferences import PreferenceRecord, prompt_key
from picochat.core.distributed import rank_share
from picochat.eval.kl import pad_rows, sampled_kl, sequence_logprobs
from picochat.core.io import atomic_write_text
from picochat.core.tokenizer import Tokenizer
from picochat.core.precision import autocast, default_device, resolve_precision
from picochat.train.trainer import Trainer
from picochat.train.reward import load_preference_splits

DPO_LOSSES = ("sigmoid", "ipo")


# ---------------------------------------------------------------------------------------------
# The loss


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    kind: str = "sigmoid",
) -> tuple[torch.Tensor, dict]:
    """Mean DPO (or IPO) loss over pairs, and diagnostics. All inputs (P,) sequence log-probs.

    stats: reward_accuracy (share of pairs whose implicit reward β(log π − log π_ref) ranks chosen
    above rejected), reward_margin (mean chosen − rejected reward), chosen_reward, rejected_reward.
    """
    chosen_reward = beta * (policy_chosen - ref_chosen)  # (P,)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    delta = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)  # (P,)
    if kind == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)
    elif kind == "ipo":
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"DPO loss kind must be one of {DPO_LOSSES}, got {kind!r}")
    with torch.no_grad():
        stats = torch.stack([
            (chosen_reward > rejected_reward).to(chosen_reward.dtype).mean(),
            (chosen_reward - rejected_reward).mean(),
            chosen_reward.mean(),
            rejected_reward.mean(),
        ]).tolist()  # one device sync for all four
    names = ("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward")
    return losses.mean(), dict(zip(names, stats))


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


def _pairs_of(groups: list[list[int]]) -> list[tuple[int, int]]:
    return [(w, l) for i, gw in enumerate(groups) for gl in groups[i + 1 :] for w in gw for l in gl]


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

    def head(self, n_records: int) -> "PairData":
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
        rec_pairs = [(index[w], index[l]) for w, l in rec.pairs() if w in index and l in index]
        gold = rec.meta.get("gold_ranking")
        rec_gold = [(index[w], index[l]) for w, l in _pairs_of(gold) if w in index and l in index] if gold else []
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
def row_logprobs(model: torch.nn.Module, data: PairData, pad_id: int, precision: str, batch_rows: int = 64) -> np.ndarray:
    """Sequence log-probs of every row of `data` under `model`: (R,) float32. Rows are batched by
    length, so little of the compute goes to padding."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(data.rows)), key=lambda i: len(data.rows[i]))
    out = np.zeros(len(data.rows), dtype=np.float32)
    for start in range(0, len(order), batch_rows):
        idx = order[start : start + batch_rows]
        ids, mask = pad_rows([data.rows[i] for i in idx], [data.masks[i] for i in idx], pad_id)
        with autocast(precision, device):
            out[idx] = sequence_logprobs(model, ids.to(device), mask.to(device)).cpu().numpy()
    model.train(was_training)
    return out


def all_row_logprobs(model: torch.nn.Module, data: PairData, pad_id: int, precision: str) -> np.ndarray:
    """`row_logprobs` of every row; under torchrun each process scores every world_size-th row of
    the unwrapped model and the results are summed back together, so every process has them all."""
    rank, world = distributed.rank(), distributed.world_size()
    if world == 1:
        return row_logprobs(model, data, pad_id, precision)
    mine = PairData(data.rows[rank::world], data.masks[rank::world], data.pairs[:0], data.gold_pairs[:0], [])
    out = np.zeros(len(data.rows), dtype=np.float64)
    out[rank::world] = row_logprobs(model, mine, pad_id, precision)
    return distributed.all_reduce(torch.from_numpy(out)).numpy().astype(np.float32)


def dpo_batch(data: PairData, batch_size: int, pad_id: int, seed: int, step: int, micro: int,
              rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
    """`batch_size` random pairs, a pure function of (seed, step, micro) for exact resume; under
    torchrun, process `rank`'s share of the global batch of batch_size × world_size pairs.

    input_ids (2B, T): the chosen rows, then the rejected rows, right-padded together;
    loss_mask (2B, T); ref_logps (2B,) in the same order.
    """
    rng = np.random.default_rng([seed, step, micro])
    drawn = rng.integers(0, len(data.pairs), size=batch_size * world_size)
    pairs = data.pairs[rank_share(drawn, batch_size, rank)]  # (B, 2)
    idx = np.concatenate([pairs[:, 0], pairs[:, 1]])  # (2B,)
    ids, mask = pad_rows([data.rows[i] for i in idx], [data.masks[i] for i in idx], pad_id)
    return {"input_ids": ids, "loss_mask": mask, "ref_logps": torch.from_numpy(data.ref_logps[idx])}


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
        w, l = torch.from_numpy(data.pairs[:, 0]), torch.from_numpy(data.pairs[:, 1])
        loss, stats = dpo_loss(pol[w], pol[l], ref[w], ref[l], beta, label_smoothing, kind)
        out.update({"loss": loss.item(), **stats, "n_pairs": len(data.pairs)})
    if len(data.gold_pairs):
        reward = beta * (pol - ref)
        w, l = torch.from_numpy(data.gold_pairs[:, 0]), torch.from_numpy(data.gold_pairs[:, 1])
        labelled = set(map(tuple, data.pairs.tolist()))
        out.update({
            "gold_reward_accuracy": (reward[w] > reward[l]).double().mean().item(),
            "label_gold_agreement": float(np.mean([tuple(p) in labelled for p in data.gold_pairs.tolist()])),
            "n_gold_pairs": len(data.gold_pairs),
        })
    return out


# ---------------------------------------------------------------------------------------------
# The stage


def run_dpo(cfg, out: Path, show_progress: bool = True) -> dict:
    out = Path(out)
    dcfg = cfg.dpo
    dcfg.validate()
    stage_dir = out / "dpo"
    init_dir = model_location(dcfg.init, "sft", out)
    device = default_device()
    t0 = time.perf_counter()
    model, meta = load_model(init_dir, device)
    if model.cfg.head != "lm":
        raise ValueError(f"dpo.init={meta['model_dir']} is a reward model (head {model.cfg.head!r}); "
                         "DPO starts from a chat model, e.g. <out>/sft")
    tokenizer_file = Path(meta["model_dir"]) / "tokenizer.json"
    tokenizer = Tokenizer.load(tokenizer_file)
    seq_len = min(dcfg.seq_len, model.cfg.max_seq_len)

    train_records, test_records, problems = load_preference_splits(out, dcfg.sources, dcfg.max_records,
                                                                   dcfg.val_fraction, key="dpo.sources")
    for p in problems[:5]:
        print(f"[dpo] skipped: {p}")
    if problems:
        print(f"[dpo] {len(problems)} invalid record(s) skipped in total")
    train = encode_preferences(train_records, tokenizer, seq_len)
    test = encode_preferences(test_records, tokenizer, seq_len)
    if not len(train.pairs):
        raise ValueError(f"no preference pairs to train DPO on in {', '.join(dcfg.sources) or out / 'label'}: "
                         "records need a ranking with at least two groups (scalar labels and all-tied "
                         "rankings teach DPO nothing)")

    # The reference log-probs, once: the policy has not moved yet, so it is the reference.
    tcfg = dcfg.train
    precision = resolve_precision(tcfg.precision, device)
    t_ref = time.perf_counter()
    train.ref_logps = all_row_logprobs(model, train, tokenizer.pad_id, precision)
    test.ref_logps = all_row_logprobs(model, test, tokenizer.pad_id, precision)
    print(f"[dpo] {len(train.record_ends):,} train / {len(test.record_ends):,} held-out prompts, "
          f"{len(train.pairs):,} / {len(test.pairs):,} pairs, loss={dcfg.loss}, beta={dcfg.beta}; "
          f"reference log-probs of {len(train.rows) + len(test.rows):,} responses in {time.perf_counter() - t_ref:.1f}s"
          + (f"; {train.n_cut + test.n_cut} responses cut to {seq_len + 1} tokens" if train.n_cut + test.n_cut else ""))

    val = test.head(tcfg.eval_batches * tcfg.batch_size)  # prompts scored at each evaluation

    def evaluate(m) -> dict:
        metrics = pair_metrics(val, row_logprobs(m, val, tokenizer.pad_id, precision), dcfg.beta,
                               dcfg.label_smoothing, dcfg.loss)
        return {f"val_{k}": v for k, v in metrics.items() if isinstance(v, float)}

    trainer = Trainer(
        model, tcfg, stage_dir,
        get_batch=lambda step, micro: dpo_batch(train, tcfg.batch_size, tokenizer.pad_id, tcfg.seed, step, micro,
                                                distributed.rank(), distributed.world_size()),
        loss_fn=lambda m, b: dpo_batch_loss(m, b, dcfg.beta, dcfg.label_smoothing, dcfg.loss),
        evaluate=evaluate if len(val.pairs) or len(val.gold_pairs) else None,
        tokenizer_file=tokenizer_file, device=device, stage="dpo", show_progress=show_progress,
    )
    result, model = trainer.fit_to_end()
    if model is None:  # under torchrun, rank 0 alone writes the model and evaluates it
        return {}
    write_model_dir(stage_dir, model, tokenizer_file, {
        "stage": "dpo", "step": result.step, "init": str(init_dir), "loss": dcfg.loss, "beta": dcfg.beta,
    })
    from picochat.core.chat import write_tokenizer_config

    write_tokenizer_config(stage_dir)

    model.eval()
    held_out = pair_metrics(test, row_logprobs(model, test, tokenizer.pad_id, precision), dcfg.beta,
                            dcfg.label_smoothing, dcfg.loss) if test.rows else {}
    summary = {
        "stage": "dpo",
        "init": str(init_dir),
        "loss": dcfg.loss,
        "beta": dcfg.beta,
        "label_smoothing": dcfg.label_smoothing,
        "n_train_prompts": len(train.record_ends),
        "n_test_prompts": len(test.record_ends),
        "n_train_pairs": len(train.pairs),
        "n_invalid_records": len(problems),
        "n_cut": train.n_cut + test.n_cut,
        "n_dropped_pairs": train.n_dropped_pairs + test.n_dropped_pairs,  # a response cut off entirely
        **result.figures(),
        **{f"val_{k}": v for k, v in held_out.items()},  # all held-out prompts, after training
    }
    if dcfg.eval_prompts > 0:
        summary.update(_after_training_evals(cfg, out, model, tokenizer, test_records or train_records,
                                             init_dir, device, precision, show_progress, stage_dir))
    summary["wall_s"] = time.perf_counter() - t0
    return summary


def _after_training_evals(cfg, out, model, tokenizer, records, init_dir, device, precision, show_progress,
                          stage_dir) -> dict:
    """Gold scores on held-out world prompts (built-in world only, as SFT measures them), for the
    DPO model and its reference on the same prompts and seeds, and the KL from the reference."""
    from picochat.core.chat import render_prompt

    dcfg = cfg.dpo
    summary: dict = {}
    reference, _ = load_model(init_dir, device)
    reference.eval()
    world_test = out / "world" / "chat_test.jsonl"
    if not dcfg.sources and world_test.exists():
        from picochat.eval.gold_eval import evaluate_gold, gold_gains, gold_summary
        from picochat.train.sft import held_out_subset
        from picochat.world import GoldScorer, read_chat_examples, read_world

        examples = held_out_subset(read_chat_examples(world_test), dcfg.eval_prompts)
        scorer = GoldScorer(read_world(out / "world" / "world.json")[0])
        k = dcfg.eval_samples
        kwargs = dict(precision=precision, max_new_tokens=dcfg.eval_max_new_tokens, n_samples=k,
                      seed=dcfg.train.seed, show_progress=show_progress)
        after = evaluate_gold(model, tokenizer, examples, scorer, label="dpo", **kwargs)
        before = evaluate_gold(reference, tokenizer, examples, scorer, label="reference", **kwargs)
        lines = ["# DPO model answers to held-out prompts (greedy)\n"]
        for a, b in list(zip(after["examples"], before["examples"]))[:12]:
            lines.append(f"## [{a['task']}/{a['lang']}] {a['prompt']}\n\n- **DPO** (gold {a['score']:.2f}): "
                         f"{a['answer']}\n- **reference** (gold {b['score']:.2f}): {b['answer']}\n")
        atomic_write_text(stage_dir / "samples.md", "\n".join(lines))
        for ex in after["examples"][:6]:
            print(f"  user: {ex['prompt']}\n  dpo:  {ex['answer']}   (gold {ex['score']:.2f})")
        summary.update({
            "gold_score": after["greedy"],
            "gold_score_sampled": after.get("sampled"),
            f"gold_score_best_of_{k}": after.get(f"best_of_{k}"),
            "gold_score_sft": before["greedy"],  # the reference (starting) model, same prompts and seeds (as PPO)
            "gold_score_sft_sampled": before.get("sampled"),
            **gold_gains(after, before),
            "gold": gold_summary(after),
            "gold_sft": gold_summary(before),
        })
        prompts = [e.prompt() for e in examples]
    else:  # the held-out preference prompts, each once
        seen, prompts = set(), []
        for r in records:
            key = prompt_key(r.prompt) if r.prompt is not None else None
            if key is not None and key not in seen and r.prompt[-1]["role"] == "user":
                seen.add(key)
                prompts.append(r.prompt)
        room = model.cfg.max_seq_len - dcfg.eval_max_new_tokens
        prompts = [p for p in prompts if len(render_prompt(tokenizer, p)) <= room][: dcfg.eval_prompts]
    if prompts:
        kl = sampled_kl(model, reference, tokenizer, prompts, precision, n_samples=dcfg.kl_samples,
                        max_new_tokens=dcfg.eval_max_new_tokens, seed=dcfg.train.seed)
        summary.update({
            "kl": kl["mean"],  # per response, nats: E_{y~pi} sum_t log pi(y_t) - log pi_ref(y_t)
            "kl_stderr": kl["stderr"],
            "kl_tokenwise": kl["mean_tokenwise"],  # same quantity, lower-variance estimator
            "kl_tokenwise_stderr": kl["stderr_tokenwise"],
            "kl_prompts": kl["n_prompts"],
            "response_tokens": kl["mean_response_tokens"],
            "finished_rate": kl["finished_rate"],
        })
    return summary
