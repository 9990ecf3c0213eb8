"""The DPO stage: train the SFT model directly on the preference pairs against a frozen reference,
then judge it on held-out prompts as PPO is judged (see picochat.train.dpo for the pieces)."""

from __future__ import annotations

import time
from pathlib import Path

from picochat.core import distributed
from picochat.core.chat import render_prompt, write_tokenizer_config
from picochat.core.checkpoint import TOKENIZER_FILE, write_model_dir
from picochat.core.precision import default_device, resolve_precision
from picochat.data.preferences import prompt_key
from picochat.eval.kl import sampled_kl
from picochat.eval.policy_eval import compare_on_gold, kl_summary, world_test_examples
from picochat.layout import answer_cache_dir, load_model, load_model_and_tokenizer, model_location, world_file
from picochat.train.dpo import (
    all_row_logprobs,
    dpo_batch,
    dpo_batch_loss,
    encode_preferences,
    pair_metrics,
    row_logprobs,
    rows_trained_on,
)
from picochat.train.reward import load_preference_splits
from picochat.train.trainer import Trainer
from picochat.world import GoldScorer, read_world


def run(cfg, out: Path, show_progress: bool = True) -> dict:
    out = Path(out)
    dcfg = cfg.dpo
    dcfg.validate()
    stage_dir = out / "dpo"
    init_dir = model_location(dcfg.init, "sft", out)
    device = default_device()
    t0 = time.perf_counter()
    model, tokenizer, meta = load_model_and_tokenizer(init_dir, device)
    if model.cfg.head != "lm":
        raise ValueError(f"dpo.init={meta['model_dir']} is a reward model (head {model.cfg.head!r}); "
                         "DPO starts from a chat model, e.g. <out>/sft")
    tokenizer_file = Path(meta["model_dir"]) / TOKENIZER_FILE  # copied into the model directories written
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

    # The reference log-probs, once: the policy has not moved yet, so it is the reference. Of the
    # training rows, only those the batches will draw (they are known in advance, see dpo_batch).
    tcfg = dcfg.train
    precision = resolve_precision(tcfg.precision, device)
    t_ref = time.perf_counter()
    used = rows_trained_on(train, tcfg.batch_size, tcfg.seed, tcfg.max_steps, tcfg.grad_accum_steps,
                           distributed.world_size())
    train.ref_logps = all_row_logprobs(model, train, tokenizer.pad_id, precision, rows=used)
    test.ref_logps = all_row_logprobs(model, test, tokenizer.pad_id, precision)
    print(f"[dpo] {len(train.record_ends):,} train / {len(test.record_ends):,} held-out prompts, "
          f"{len(train.pairs):,} / {len(test.pairs):,} pairs, loss={dcfg.loss}, beta={dcfg.beta}; "
          f"reference log-probs of the {len(used):,} training responses the batches draw and "
          f"{len(test.rows):,} held-out ones in {time.perf_counter() - t_ref:.1f}s"
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
    DPO model and its reference on the same prompts and seeds, and the KL from the reference; with
    your own preference data, the KL on the held-out preference prompts alone."""
    dcfg = cfg.dpo
    reference, _ = load_model(init_dir, device)
    reference.eval()
    if not dcfg.sources and (out / "world" / "chat_test.jsonl").exists():
        comparison = compare_on_gold(
            model, reference, tokenizer, world_test_examples(out, dcfg.eval_prompts),
            GoldScorer(read_world(world_file(out))[0]), label="dpo", start_label="reference", precision=precision,
            max_new_tokens=dcfg.eval_max_new_tokens, n_samples=dcfg.eval_samples, seed=dcfg.train.seed,
            kl_samples=dcfg.kl_samples, show_progress=show_progress, samples_file=stage_dir / "samples.md",
            cache_dir=answer_cache_dir(out))
        for ex in comparison.after["examples"][:6]:
            print(f"  user: {ex['prompt']}\n  dpo:  {ex['answer']}   (gold {ex['score']:.2f})")
        # gold_score_sft and gold_sft hold the reference model's scores: DPO's reference is the
        # model it started from (dpo.init, the SFT model by default), as PPO's is.
        return {**comparison.summary(), **kl_summary(comparison.kl)}
    prompts = _held_out_preference_prompts(records, tokenizer, model.cfg.max_seq_len - dcfg.eval_max_new_tokens,
                                           dcfg.eval_prompts)
    if not prompts:
        return {}
    kl = sampled_kl(model, reference, tokenizer, prompts, precision, n_samples=dcfg.kl_samples,
                    max_new_tokens=dcfg.eval_max_new_tokens, seed=dcfg.train.seed)
    return kl_summary(kl)


def _held_out_preference_prompts(records, tokenizer, max_prompt_tokens: int, n: int) -> list[list[dict]]:
    """The first `n` distinct prompts of the preference records that end with a user turn and fit
    in `max_prompt_tokens`."""
    seen, prompts = set(), []
    for r in records:
        key = prompt_key(r.prompt) if r.prompt is not None else None
        if key is not None and key not in seen and r.prompt[-1]["role"] == "user":
            seen.add(key)
            prompts.append(r.prompt)
    return [p for p in prompts if len(render_prompt(tokenizer, p)) <= max_prompt_tokens][:n]
