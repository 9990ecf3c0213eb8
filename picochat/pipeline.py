"""The stages of a run, what each depends on, and running them in order.

Each stage writes `<out>/<stage>/`; it is complete when its `summary.json` exists and carries the
stage's fingerprint: a hash of the config sections it reads and of the fingerprints of the stages
it reads from. A complete stage whose fingerprint still matches is reused; a stage whose inputs
changed is redone (and so is everything downstream, since their fingerprints change too).
A stage that was killed resumes from its last checkpoint when its fingerprint is unchanged.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from picochat.config import RunConfig, save_config
from picochat.io import MetricsLog, atomic_write_json


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]  # config sections the stage reads
    upstream: tuple[str, ...]  # stages whose outputs it reads
    runner: str  # "module:function" taking (cfg, out, show_progress) and returning the summary dict
    summary_line: Callable[[dict], str]


def run_world(cfg: RunConfig, out: Path, show_progress: bool) -> dict:
    from picochat.world import build_world, write_chat_tasks, write_world

    t0 = time.perf_counter()
    summary = write_world(out / "world", cfg.world)
    chat = write_chat_tasks(out / "world", build_world(cfg.world), cfg.chat)
    return {"stage": "world", **summary, "chat_tasks": chat, "wall_s": time.perf_counter() - t0}


def _tokenizer_training_texts(cfg: RunConfig, out: Path):
    from picochat.data.readers import iter_corpus

    sources = [Path(s) for s in cfg.tokenizer.sources] or [out / "world" / "corpus.jsonl"]
    for i, text in enumerate(iter_corpus(sources, cfg.tokenizer.text_field)):
        if cfg.tokenizer.max_docs and i >= cfg.tokenizer.max_docs:
            break
        yield text
    # The chat roles appear right after <|im_start|> in every chat turn (SFT and later); train on
    # them so each role is one token instead of a few byte pieces.
    for _ in range(64):
        yield from ("system", "user", "assistant")


def run_tokenizer(cfg: RunConfig, out: Path, show_progress: bool) -> dict:
    from picochat.data.readers import iter_corpus
    from picochat.tokenizer import train_tokenizer

    t0 = time.perf_counter()
    tok = train_tokenizer(
        _tokenizer_training_texts(cfg, out), cfg.tokenizer.vocab_size,
        min_frequency=cfg.tokenizer.min_frequency, show_progress=show_progress,
    )
    tok.save(out / "tokenizer")
    # Compression on the first documents: how many UTF-8 bytes one token carries.
    sources = [Path(s) for s in cfg.tokenizer.sources] or [out / "world" / "corpus.jsonl"]
    n_bytes = n_tokens = 0
    for i, text in enumerate(iter_corpus(sources, cfg.tokenizer.text_field)):
        if i >= 2000:
            break
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(tok.encode(text))
    return {
        "stage": "tokenizer",
        "vocab_size": tok.vocab_size,
        "vocab_size_requested": cfg.tokenizer.vocab_size,
        "bytes_per_token": n_bytes / max(1, n_tokens),
        "wall_s": time.perf_counter() - t0,
    }


def _sft_line(s: dict) -> str:
    line = f"val loss {s.get('val_loss', float('nan')):.3f}"
    if "gold_score" in s:
        line += (f", gold score greedy {s['gold_score']:.3f} / sampled {s['gold_score_sampled']:.3f} "
                 f"(pretrained model: {s['gold_score_pretrained']:.3f})")
    return line


def run_label(cfg: RunConfig, out: Path, show_progress: bool) -> dict:
    from picochat.checkpoint import load_model_dir
    from picochat.feedback.autolabel import label_prompts, world_label_prompts
    from picochat.tokenizer import Tokenizer
    from picochat.train.precision import default_device, resolve_precision
    from picochat.world import GoldScorer, read_world

    t0 = time.perf_counter()
    device = default_device()
    model, meta = load_model_dir(out / "sft", device)
    tokenizer = Tokenizer.load(Path(meta["model_dir"]) / "tokenizer.json")
    scorer = GoldScorer(read_world(out / "world" / "world.json")[0])
    precision = resolve_precision("auto", device)
    lcfg = cfg.label
    summaries = {}
    for split, n, name in (("train", lcfg.n_prompts, "preferences.jsonl"), ("test", lcfg.n_test_prompts, "preferences_test.jsonl")):
        prompts = world_label_prompts(out / "world", split, n, lcfg.seed)
        print(f"[label] ranking {lcfg.k} SFT answers to each of {len(prompts)} {split} prompts (built-in labeler, "
              f"flip_prob={lcfg.flip_prob})")
        summaries[split] = label_prompts(model, tokenizer, scorer, prompts, out / "label" / name, lcfg, precision,
                                         show_progress=show_progress)
    return {"stage": "label", **summaries["train"], "test": summaries["test"], "wall_s": time.perf_counter() - t0}


def _rm_line(s: dict) -> str:
    line = f"held-out pair accuracy {s.get('pair_accuracy', float('nan')):.3f}"
    if "gold_pair_accuracy" in s:
        line += (f", vs gold ordering {s['gold_pair_accuracy']:.3f} "
                 f"(labels agree with gold on {s['label_gold_agreement']:.3f})")
    return line


def _policy_line(s: dict) -> str:
    if "gold_score" not in s:
        return f"{s.get('iterations', s.get('steps'))} steps"
    g = s.get("gold_gain_sampled") or {}
    return (f"gold score greedy {s['gold_score']:.3f} / sampled {s['gold_score_sampled']:.3f} "
            f"(SFT {s['gold_score_sft']:.3f} / {s['gold_score_sft_sampled']:.3f}; sampled gain "
            f"{g.get('mean', float('nan')):+.3f}, 95% CI [{g.get('ci95', [0, 0])[0]:+.3f}, {g.get('ci95', [0, 0])[1]:+.3f}]), "
            f"KL to SFT {s['kl']:.2f}")


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("world", ("world", "chat"), (), "picochat.pipeline:run_world",
              lambda s: f"{s['n_characters']} characters, {s['n_docs']:,} documents, {s['n_bytes'] / 1e6:.1f} MB"),
        Stage("tokenizer", ("tokenizer",), ("world",), "picochat.pipeline:run_tokenizer",
              lambda s: f"vocab {s['vocab_size']}, {s['bytes_per_token']:.2f} bytes/token"),
        Stage("pretrain", ("model", "pretrain"), ("tokenizer",), "picochat.train.pretrain:run_pretrain",
              lambda s: (f"val loss {s['val_loss']:.3f}, ppl {s['val_ppl']:.2f}, bpb {s['val_bpb']:.3f}, "
                         f"{s['tokens_per_s']:,.0f} tok/s ({s['precision']})")),
        Stage("sft", ("sft",), ("pretrain", "world"), "picochat.train.sft:run_sft", _sft_line),
        Stage("label", ("label",), ("sft", "world"), "picochat.pipeline:run_label",
              lambda s: (f"{s['n_prompts']} prompts x {s['k']} answers, mean gold {s['mean_gold']:.3f}, "
                         f"labels agree with gold on {s['pair_agreement_with_gold']:.3f} of pairs")),
        Stage("rm", ("rm",), ("label", "sft"), "picochat.train.reward:run_rm", _rm_line),
        Stage("ppo", ("ppo",), ("sft", "rm", "world"), "picochat.train.ppo:run_ppo", _policy_line),
        Stage("dpo", ("dpo",), ("sft", "label", "world"), "picochat.train.dpo:run_dpo", _policy_line),
    )
}


def stage_fingerprint(name: str, cfg: RunConfig) -> str:
    stage = STAGES[name]
    d = cfg.to_dict()
    parts = {s: d[s] for s in stage.sections}
    parts["upstream"] = [stage_fingerprint(u, cfg) for u in stage.upstream if _reads_upstream(name, u, cfg)]
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _reads_upstream(name: str, upstream: str, cfg: RunConfig) -> bool:
    """The tokenizer reads the world corpus only when no sources of its own are configured."""
    if name == "tokenizer" and upstream == "world":
        return not cfg.tokenizer.sources
    if name == "sft" and upstream == "world":
        return not cfg.sft.sources
    if name == "sft" and upstream == "pretrain":
        return not cfg.sft.init
    if name == "rm" and upstream == "label":
        return not cfg.rm.sources
    if name == "rm" and upstream == "sft":
        return not cfg.rm.init
    if name == "ppo":
        return {"sft": not cfg.ppo.init, "rm": not cfg.ppo.reward_model, "world": not cfg.ppo.prompts}[upstream]
    if name == "dpo":
        return {"sft": not cfg.dpo.init, "label": not cfg.dpo.sources, "world": not cfg.dpo.sources}[upstream]
    return True


def stage_status(name: str, cfg: RunConfig, out: Path) -> str:
    """'done' (complete, inputs unchanged), 'stale' (outputs from other inputs), or 'todo'."""
    stage_dir = out / name
    marker = stage_dir / "stage.json"
    if not marker.exists():
        return "stale" if stage_dir.exists() and any(stage_dir.iterdir()) else "todo"
    if json.loads(marker.read_text())["fingerprint"] != stage_fingerprint(name, cfg):
        return "stale"
    return "done" if (stage_dir / "summary.json").exists() else "todo"


def run_stage(name: str, cfg: RunConfig, out: Path, show_progress: bool = True, force: bool = False) -> dict:
    """Run one stage (reusing it when complete and unchanged) and return its summary."""
    out = Path(out)
    stage = STAGES[name]
    stage_dir = out / name
    status = "stale" if force and (stage_dir).exists() else stage_status(name, cfg, out)
    if status == "done":
        summary = json.loads((stage_dir / "summary.json").read_text())
        print(f"[{name}] up to date, reusing {stage_dir} ({stage.summary_line(summary)})")
        return summary
    if status == "stale":
        print(f"[{name}] config or inputs changed since {stage_dir} was written: starting this stage over")
        shutil.rmtree(stage_dir)
    for up in stage.upstream:
        if _reads_upstream(name, up, cfg) and stage_status(up, cfg, out) != "done":
            raise RuntimeError(
                f"stage {name!r} needs stage {up!r} first: run `picochat {up} --out {out}` "
                f"(or `picochat run --out {out}`)"
            )
    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stage_dir / "stage.json", {"stage": name, "fingerprint": stage_fingerprint(name, cfg)})
    save_config(cfg, out / "config.yaml")
    module, function = stage.runner.split(":")
    summary = getattr(importlib.import_module(module), function)(cfg, out, show_progress)
    summary["fingerprint"] = stage_fingerprint(name, cfg)
    metrics = MetricsLog(stage_dir / "metrics.jsonl")
    if not metrics.path.exists():  # stages without a training loop log their one result
        metrics.write({"step": 0, **{k: v for k, v in summary.items() if isinstance(v, (int, float))}})
    atomic_write_json(stage_dir / "summary.json", summary)
    print(f"[{name}] done: {stage.summary_line(summary)} -> {stage_dir}")
    return summary


def run_pipeline(cfg: RunConfig, out: Path, stages: list[str] | None = None, show_progress: bool = True) -> dict:
    names = stages or list(STAGES)
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; stages are: {', '.join(STAGES)}")
    ordered = [n for n in STAGES if n in names]
    return {name: run_stage(name, cfg, out, show_progress) for name in ordered}
