"""The SFT stage: fine-tune the pretrained model on chat demonstrations (loss on assistant tokens),
then judge it on held-out prompts with the gold scorer (see picochat.train.sft for the pieces)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from picochat.config import RunConfig
from picochat.core import distributed
from picochat.core.chat import render_chat, write_tokenizer_config
from picochat.core.checkpoint import TOKENIZER_FILE, write_model_dir
from picochat.core.generate import SamplingConfig
from picochat.core.io import atomic_write_text
from picochat.core.model import lm_loss
from picochat.core.precision import default_device
from picochat.data.chat_data import iter_conversations
from picochat.data.shards import is_val_document
from picochat.data.sources import resolve_sources
from picochat.eval.gold_eval import answer_prompts, evaluate_gold, gold_summary, held_out_subset
from picochat.layout import answer_cache_dir, load_model, load_model_and_tokenizer, model_location, world_file
from picochat.train.sft import IGNORE, make_val_loss, sft_batch, tokenize_conversations
from picochat.train.trainer import Trainer
from picochat.world import GoldScorer, read_chat_examples, read_world


def load_sft_data(cfg: RunConfig, out: Path):
    """(train conversations, val conversations, held-out ChatExamples or None).

    Built-in: the world's chat tasks (train/test split by prompt). Own data: JSONL files (OpenAI
    messages, Alpaca, ShareGPT), split into train/val by a hash of each conversation.
    """
    scfg = cfg.sft
    if not scfg.sources:
        train = read_chat_examples(out / "world" / "chat_train.jsonl")
        test = read_chat_examples(out / "world" / "chat_test.jsonl")
        return [list(e.messages) for e in train], [list(e.messages) for e in test], test

    train, val = [], []
    for source in resolve_sources(scfg.sources, "sft.sources"):
        for conv in iter_conversations(source, limit=scfg.max_examples):
            key = json.dumps(conv, ensure_ascii=False, sort_keys=True)
            (val if is_val_document(key, scfg.val_fraction) else train).append(conv)
    if not train:
        raise ValueError(f"no training conversations in {', '.join(scfg.sources)}")
    return train, val, None


def run(cfg: RunConfig, out: Path, show_progress: bool = True) -> dict:
    out = Path(out)
    scfg = cfg.sft
    stage_dir = out / "sft"
    init_dir = model_location(scfg.init, "pretrain", out)
    device = default_device()
    t0 = time.perf_counter()
    model, tokenizer, meta = load_model_and_tokenizer(init_dir, device)
    tokenizer_file = Path(meta["model_dir"]) / TOKENIZER_FILE  # copied into the model directories written
    seq_len = min(scfg.seq_len, model.cfg.max_seq_len)

    train_convs, val_convs, held_out = load_sft_data(cfg, out)
    train, n_cut = tokenize_conversations(tokenizer, train_convs, seq_len)
    val, _ = tokenize_conversations(tokenizer, val_convs, seq_len)
    n_assistant = sum(int(m.sum()) for _, m in train)
    print(f"[sft] {len(train):,} train / {len(val):,} held-out conversations from "
          f"{', '.join(scfg.sources) or 'the world chat tasks'}; {n_assistant:,} assistant tokens"
          + (f"; {n_cut} cut to {seq_len + 1} tokens" if n_cut else ""))

    tcfg = scfg.train
    rank, world = distributed.rank(), distributed.world_size()
    trainer = Trainer(
        model, tcfg, stage_dir,
        get_batch=lambda step, micro: sft_batch(train, tcfg.batch_size, tokenizer.pad_id, tcfg.seed, step, micro,
                                                rank, world),
        loss_fn=lambda m, b: lm_loss(m(b["input_ids"]), b["targets"]),
        # The loss is a mean over assistant tokens, and batches differ in how many they hold: weigh
        # micro-batches (and processes) by it, so the step's loss is the mean over all its tokens.
        loss_weight=lambda b: int((b["targets"] != IGNORE).sum()),
        evaluate=make_val_loss(val, tcfg.batch_size, tokenizer.pad_id, tcfg.eval_batches * tcfg.batch_size,
                               rank, world) if val else None,
        tokenizer_file=tokenizer_file, device=device, stage="sft", show_progress=show_progress,
    )
    result, model = trainer.fit_to_end()
    if model is None:  # under torchrun, rank 0 alone writes the model and evaluates it
        return {}
    write_model_dir(stage_dir, model, tokenizer_file, {"stage": "sft", "step": result.step, "init": str(init_dir)})

    write_tokenizer_config(stage_dir)

    summary = {
        "stage": "sft",
        "init": str(init_dir),
        "n_conversations_read": len(train_convs) + len(val_convs),
        "n_dropped": len(train_convs) + len(val_convs) - len(train) - len(val),  # nothing to learn within seq_len
        "n_cut": n_cut,
        "n_train_conversations": len(train),
        "n_val_conversations": len(val),
        **result.figures(),
        **result.eval_metrics,
    }
    if held_out is not None and scfg.eval_prompts > 0:
        summary.update(_gold_summary(cfg, out, model, tokenizer, held_out, init_dir, device,
                                     trainer.precision, show_progress, stage_dir))
    elif val_convs and scfg.eval_prompts > 0:  # your own data: no gold scorer, show held-out answers
        summary["samples"] = _held_out_answers(scfg, model, tokenizer, val_convs, trainer.precision, stage_dir)
    summary["wall_s"] = time.perf_counter() - t0
    return summary


def _held_out_answers(scfg, model, tokenizer, val_convs: list[list[dict]], precision: str, stage_dir: Path,
                      n: int = 8) -> list[dict]:
    """Greedy answers of the SFT model to the first held-out conversations (everything before their
    last assistant turn), next to the reference answer, in samples.md and the summary."""
    examples = []
    for conv in val_convs:
        last = max(i for i, m in enumerate(conv) if m["role"] == "assistant")
        prompt = conv[:last]
        if not prompt or prompt[-1]["role"] != "user":
            continue
        if len(render_chat(tokenizer, prompt, True)[0]) < model.cfg.max_seq_len // 2:
            examples.append((prompt, conv[last]["content"]))
            if len(examples) == n:
                break
    if not examples:
        return []
    max_new = min(scfg.eval_max_new_tokens, model.cfg.max_seq_len // 2)
    answers = answer_prompts(model, tokenizer, [p for p, _ in examples],
                             SamplingConfig(max_new_tokens=max_new, temperature=0), precision)
    samples = [{"prompt": p[-1]["content"], "answer": a, "reference": ref}
               for (p, ref), (a, _) in zip(examples, answers)]
    atomic_write_text(stage_dir / "samples.md", "# SFT model answers to held-out prompts (greedy)\n\n" + "".join(
        f"## {s['prompt']}\n\n- **SFT**: {s['answer']}\n- **reference**: {s['reference'][:300]}\n\n" for s in samples))
    return samples


def _gold_summary(cfg, out, model, tokenizer, held_out, init_dir, device, precision, show_progress,
                  stage_dir) -> dict:
    """Gold scores of the SFT model and, for comparison, of the model SFT started from."""
    scfg = cfg.sft
    world, _ = read_world(world_file(out))
    scorer = GoldScorer(world)
    examples = held_out_subset(held_out, scfg.eval_prompts)
    kwargs = dict(precision=precision, max_new_tokens=scfg.eval_max_new_tokens, n_samples=scfg.eval_samples,
                  seed=cfg.sft.train.seed, show_progress=show_progress, cache_dir=answer_cache_dir(out))
    after = evaluate_gold(model, tokenizer, examples, scorer, label="sft", **kwargs)
    base_model, _ = load_model(init_dir, device)
    before = evaluate_gold(base_model, tokenizer, examples, scorer, label="pretrained", **kwargs)
    k = scfg.eval_samples
    lines = ["# SFT model answers to held-out prompts (greedy)\n"]
    for ex_after, ex_before in list(zip(after["examples"], before["examples"]))[:12]:
        lines.append(f"## [{ex_after['task']}/{ex_after['lang']}] {ex_after['prompt']}\n\n"
                     f"- **SFT** (gold {ex_after['score']:.2f}): {ex_after['answer']}\n"
                     f"- **pretrained** (gold {ex_before['score']:.2f}): {ex_before['answer'][:200]}\n")
    atomic_write_text(stage_dir / "samples.md", "\n".join(lines))
    for ex in after["examples"][:6]:
        print(f"  user: {ex['prompt']}\n  sft:  {ex['answer']}   (gold {ex['score']:.2f})")
    summary = {
        "gold_score": after["greedy"],
        "gold_score_sampled": after.get("sampled"),
        f"gold_score_best_of_{k}": after.get(f"best_of_{k}"),
        "gold_score_pretrained": before["greedy"],
        "gold_score_pretrained_sampled": before.get("sampled"),
        "gold": gold_summary(after),
        "gold_pretrained": gold_summary(before),
    }
    return summary
