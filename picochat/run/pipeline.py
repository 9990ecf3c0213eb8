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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from picochat.core import distributed
from picochat.config import RunConfig, save_config
from picochat.layout import load_model, stage_reference
from picochat.core.checkpoint import CHECKPOINT_DIR
from picochat.core.io import MetricsLog, atomic_write_json, remove_orphan_temp_dirs
from picochat.core.memory import peak_rss_mb, reset_peak_rss
from picochat.run.backup import StageBackup


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]  # config sections the stage reads
    upstream: tuple[str, ...]  # stages whose outputs it reads
    runner: str  # "module:function" taking (cfg, out, show_progress) and returning the summary dict
    summary_line: Callable[[dict], str]
    distributed: bool = False  # under torchrun all processes run it (training); else rank 0 alone


def run_world(cfg: RunConfig, out: Path, show_progress: bool) -> dict:
    from picochat.world import build_world, write_chat_tasks, write_world

    t0 = time.perf_counter()
    summary = write_world(out / "world", cfg.world)
    chat = write_chat_tasks(out / "world", build_world(cfg.world), cfg.chat)
    return {"stage": "world", **summary, "chat_tasks": chat, "wall_s": time.perf_counter() - t0}


def tokenizer_corpus(cfg: RunConfig) -> tuple[list[str], str, str]:
    """(sources, text field, setting name) the tokenizer learns from: its own sources, else the
    pretraining corpus, else (empty sources) the built-in world corpus."""
    if cfg.tokenizer.sources:
        return list(cfg.tokenizer.sources), cfg.tokenizer.text_field, "tokenizer.sources"
    return list(cfg.pretrain.sources), cfg.pretrain.text_field, "pretrain.sources"


def _tokenizer_sources(cfg: RunConfig, out: Path) -> tuple[list[Path], str]:
    from picochat.data.sources import resolve_sources

    specs, text_field, key = tokenizer_corpus(cfg)
    return (resolve_sources(specs, key) if specs else [out / "world" / "corpus.jsonl"]), text_field


def _tokenizer_training_texts(cfg: RunConfig, out: Path):
    from picochat.data.readers import iter_corpus

    sources, text_field = _tokenizer_sources(cfg, out)
    for i, text in enumerate(iter_corpus(sources, text_field)):
        if cfg.tokenizer.max_docs and i >= cfg.tokenizer.max_docs:
            break
        yield text
    # The chat roles appear right after <|im_start|> in every chat turn (SFT and later); train on
    # them so each role is one token instead of a few byte pieces.
    for _ in range(64):
        yield from ("system", "user", "assistant")


def run_tokenizer(cfg: RunConfig, out: Path, show_progress: bool) -> dict:
    from picochat.data.readers import iter_corpus
    from picochat.core.tokenizer import train_tokenizer

    t0 = time.perf_counter()
    tok = train_tokenizer(
        _tokenizer_training_texts(cfg, out), cfg.tokenizer.vocab_size,
        min_frequency=cfg.tokenizer.min_frequency, show_progress=show_progress,
    )
    tok.save(out / "tokenizer")
    # Compression on the first documents: how many UTF-8 bytes one token carries.
    sources, text_field = _tokenizer_sources(cfg, out)
    n_bytes = n_tokens = 0
    for i, text in enumerate(iter_corpus(sources, text_field)):
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
    from picochat.feedback.autolabel import label_prompts, world_label_prompts
    from picochat.core.tokenizer import Tokenizer
    from picochat.core.precision import default_device, resolve_precision
    from picochat.world import GoldScorer, read_world

    t0 = time.perf_counter()
    device = default_device()
    model, meta = load_model(out / "sft", device)
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
    wall = time.perf_counter() - t0
    tokens = _sampled_tokens(tokenizer, [out / "label" / "preferences.jsonl", out / "label" / "preferences_test.jsonl"])
    return {"stage": "label", **summaries["train"], "test": summaries["test"], "tokens": tokens,
            "tokens_per_s": tokens / wall, "wall_s": wall}


def _sampled_tokens(tokenizer, files: list[Path]) -> int:
    """Tokens of all the answers in the label files: what the labeling stage sampled."""
    from picochat.data.preferences import read_preferences

    records, _ = read_preferences(files, skip_invalid=True)
    return sum(len(tokenizer.encode(r)) for record in records for r in record.responses)


def _rm_line(s: dict) -> str:
    if "scalar_accuracy" in s:  # scalar labels (e.g. sentiment): no pairs
        return (f"held-out label accuracy {s['scalar_accuracy']:.3f}, AUC {s.get('scalar_auc', float('nan')):.3f} "
                f"({s['n_scalar']} texts)")
    line = f"held-out pair accuracy {s.get('pair_accuracy', float('nan')):.3f}"
    if "gold_pair_accuracy" in s:
        line += (f", vs gold ordering {s['gold_pair_accuracy']:.3f} "
                 f"(labels agree with gold on {s['label_gold_agreement']:.3f})")
    if "best_of_4_gold_gain" in s:
        line += (f"; its best of 4 answers gains {s['best_of_4_gold_gain']:+.3f} gold over a random one "
                 f"(the gold scorer's pick {s['best_of_4_oracle_gain']:+.3f})")
    return line


def _policy_line(s: dict) -> str:
    if "gold_score" not in s:
        line = f"{s.get('iterations', s.get('steps'))} steps"
        if "reward_after_mean" in s:
            line += (f", reward-model score of samples mean {s['reward_before_mean']:.3f} -> {s['reward_after_mean']:.3f}, "
                     f"median {s['reward_before_median']:.3f} -> {s['reward_after_median']:.3f} "
                     f"({s['baseline']} -> {s['stage']}), KL to {s['baseline']} {s['kl']:.2f}")
        return line
    g = s.get("gold_gain_sampled") or {}
    return (f"gold score greedy {s['gold_score']:.3f} / sampled {s['gold_score_sampled']:.3f} "
            f"(SFT {s['gold_score_sft']:.3f} / {s['gold_score_sft_sampled']:.3f}; sampled gain "
            f"{g.get('mean', float('nan')):+.3f}, 95% CI [{g.get('ci95', [0, 0])[0]:+.3f}, {g.get('ci95', [0, 0])[1]:+.3f}]), "
            f"KL to SFT {s['kl']:.2f}")


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("world", ("world", "chat"), (), "picochat.run.pipeline:run_world",
              lambda s: f"{s['n_characters']} characters, {s['n_docs']:,} documents, {s['n_bytes'] / 1e6:.1f} MB"),
        Stage("tokenizer", ("tokenizer",), ("world",), "picochat.run.pipeline:run_tokenizer",
              lambda s: f"vocab {s['vocab_size']}, {s['bytes_per_token']:.2f} bytes/token"),
        Stage("pretrain", ("model", "pretrain"), ("tokenizer",), "picochat.train.pretrain:run_pretrain",
              lambda s: (f"val loss {s['val_loss']:.3f}, ppl {s['val_ppl']:.2f}, bpb {s['val_bpb']:.3f}, "
                         f"{s['tokens_per_s']:,.0f} tok/s ({s['precision']})"), distributed=True),
        Stage("sft", ("sft",), ("pretrain", "world"), "picochat.train.sft:run_sft", _sft_line, distributed=True),
        Stage("label", ("label",), ("sft", "world"), "picochat.run.pipeline:run_label",
              lambda s: (f"{s['n_prompts']} prompts x {s['k']} answers, mean gold {s['mean_gold']:.3f}, "
                         f"labels agree with gold on {s['pair_agreement_with_gold']:.3f} of pairs")),
        Stage("rm", ("rm",), ("label", "sft"), "picochat.train.reward:run_rm", _rm_line, distributed=True),
        Stage("ppo", ("ppo",), ("sft", "rm", "world"), "picochat.train.ppo:run_ppo", _policy_line, distributed=True),
        Stage("dpo", ("dpo",), ("sft", "label", "world"), "picochat.train.dpo:run_dpo", _policy_line, distributed=True),
    )
}


def stage_fingerprint(name: str, cfg: RunConfig) -> str:
    stage = STAGES[name]
    d = cfg.to_dict()
    parts = {s: d[s] for s in stage.sections}
    for section in parts.values():
        # DDP or FSDP changes how the work is spread over processes, not what it computes: a stage
        # done (or checkpointed) under one is reused (or resumed) under the other.
        if isinstance(section, dict) and isinstance(section.get("train"), dict):
            section["train"].pop("parallel", None)
    if name == "tokenizer" and not cfg.tokenizer.sources and cfg.pretrain.sources:
        parts["corpus"] = tokenizer_corpus(cfg)[:2]  # it learns from the pretraining corpus
    parts["upstream"] = [stage_fingerprint(u, cfg) for u in upstream_of(name, cfg)]
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def upstream_of(name: str, cfg: RunConfig) -> list[str]:
    """The stages whose outputs stage `name` reads under this config. The built-in world is read
    only when no data files of one's own are configured; a model setting (`rm.init`, ...) reads
    the stage it names (its default stage when empty) and no stage when it is a directory."""
    stage = STAGES[name]
    if name == "tokenizer":
        needed = {"world"} if not tokenizer_corpus(cfg)[0] else set()
    elif name == "sft":
        needed = {stage_reference(cfg.sft.init, "pretrain"), "world" if not cfg.sft.sources else None}
    elif name == "rm":
        needed = {stage_reference(cfg.rm.init, "sft"), "label" if not cfg.rm.sources else None}
    elif name == "ppo":
        reward = stage_reference(cfg.ppo.reward_model, "rm")
        needed = {stage_reference(cfg.ppo.init, "sft"), reward, stage_reference(cfg.ppo.value_init, reward),
                  "world" if not cfg.ppo.prompts else None}
    elif name == "dpo":
        needed = {stage_reference(cfg.dpo.init, "sft")} | ({"label", "world"} if not cfg.dpo.sources else set())
    else:
        needed = set(stage.upstream)
    return [u for u in stage.upstream if u in needed] + [u for u in STAGES if u in needed and u not in stage.upstream]


def _reads_upstream(name: str, upstream: str, cfg: RunConfig) -> bool:
    return upstream in upstream_of(name, cfg)


def run_stages(cfg: RunConfig) -> list[str]:
    """The stages this run has (`stages:` in the config; empty = all), checked, in pipeline order."""
    names = list(cfg.stages) or list(STAGES)
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)} in stages; stages are: {', '.join(STAGES)}")
    return [n for n in STAGES if n in names]


def _check_local_sources(cfg: RunConfig, stages: list[str]) -> None:
    """A missing local data file stops the run before the first stage, not hours later when the
    stage that reads it starts (Hugging Face names are downloaded by their stage)."""
    from picochat.data.sources import HF_PREFIX, resolve_source

    specs, _, tokenizer_key = tokenizer_corpus(cfg)
    reads = {"tokenizer": (tokenizer_key, specs), "pretrain": ("pretrain.sources", cfg.pretrain.sources),
             "sft": ("sft.sources", cfg.sft.sources), "rm": ("rm.sources", cfg.rm.sources),
             "ppo": ("ppo.prompts", cfg.ppo.prompts), "dpo": ("dpo.sources", cfg.dpo.sources)}
    for name in stages:
        key, sources = reads.get(name, ("", []))
        for spec in sources:
            if not spec.startswith(HF_PREFIX):
                resolve_source(spec, key)  # raises, naming the setting and how to get the data


def check_run(cfg: RunConfig, running: list[str] | None = None) -> None:
    """Every stage of the run finds what it reads within the run (a model setting can point at a
    directory instead), every model fits the sequence lengths it is given, and the local data
    files of the stages about to run (`running`, default all) exist."""
    stages = run_stages(cfg)
    for name in stages:
        missing = [u for u in upstream_of(name, cfg) if u not in stages]
        if missing:
            raise ValueError(f"stage {name!r} reads stage {missing[0]!r}, which this run does not have "
                             f"(stages: {', '.join(stages)}); add it to stages, or point the setting that names it "
                             f"(e.g. {name}.init) at a model directory")
    _check_local_sources(cfg, [n for n in (running or stages) if n in STAGES])
    for name in stages:
        check_stage_lengths(name, cfg)


def check_stage_lengths(name: str, cfg: RunConfig) -> None:
    """The sequence lengths stage `name` is given fit the model it trains."""
    max_len = cfg.model.max_seq_len
    if name == "pretrain" and cfg.pretrain.seq_len > max_len:
        raise ValueError(f"pretrain.seq_len={cfg.pretrain.seq_len} exceeds model.max_seq_len={max_len}")
    if name == "ppo" and cfg.ppo.format == "text" and cfg.ppo.prompt_tokens + 1 + cfg.ppo.max_new_tokens > max_len:
        raise ValueError(f"ppo.prompt_tokens + 1 + ppo.max_new_tokens exceeds model.max_seq_len={max_len}")


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
    """Run one stage (reusing it when complete and unchanged) and return its summary.

    Under torchrun every process calls this. Training stages run in all of them; the others
    (world, tokenizer, label) run in rank 0 while the rest wait. Only rank 0 changes files here;
    the other processes then read the summary it wrote.
    """
    out = Path(out)
    stage = STAGES[name]
    stage_dir = out / name
    status = "stale" if force and (stage_dir).exists() else stage_status(name, cfg, out)
    if status == "done":
        summary = json.loads((stage_dir / "summary.json").read_text())
        print(f"[{name}] up to date, reusing {stage_dir} ({stage.summary_line(summary)})")
        return summary
    for up in upstream_of(name, cfg):
        if stage_status(up, cfg, out) != "done":
            raise RuntimeError(
                f"stage {name!r} needs stage {up!r} first: run `picochat {up} --out {out}` "
                f"(or `picochat run --out {out}`)"
            )
    # Everything that can be checked without running the stage is checked before anything on disk
    # changes: a mistyped file name must not cost the finished stage it would replace.
    _check_local_sources(cfg, [name])
    check_stage_lengths(name, cfg)
    distributed.barrier()  # every process has read the stage's state before rank 0 changes it
    backup = StageBackup(stage_dir, out / "config.yaml")
    if distributed.is_main():
        where = backup.set_aside() if status == "stale" else backup.remember_config()
        if status == "stale":
            print(f"[{name}] config or inputs changed since {stage_dir} was written: starting this stage over ({where})")
        remove_orphan_temp_dirs(stage_dir, CHECKPOINT_DIR)  # left by a kill during a checkpoint write
        stage_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(stage_dir / "stage.json", {"stage": name, "fingerprint": stage_fingerprint(name, cfg)})
        save_config(cfg, out / "config.yaml")
    distributed.barrier()
    summary: dict = {}
    try:
        if stage.distributed or distributed.is_main():
            module, function = stage.runner.split(":")
            reset_peak_rss()  # this stage's peak, not the peak of the stages before it in this process
            summary = getattr(importlib.import_module(module), function)(cfg, out, show_progress)
    except BaseException:
        if distributed.is_main():
            print(f"[{name}] stopped: {backup.rollback()}", file=sys.stderr)
        raise
    if distributed.is_main():
        summary["fingerprint"] = stage_fingerprint(name, cfg)
        summary["peak_rss_mb"] = peak_rss_mb()
        metrics = MetricsLog(stage_dir / "metrics.jsonl")
        if not metrics.path.exists():  # stages without a training loop log their one result
            metrics.write({"step": 0, **{k: v for k, v in summary.items() if isinstance(v, (int, float))}})
        atomic_write_json(stage_dir / "summary.json", summary)
        backup.commit()
        print(f"[{name}] done: {stage.summary_line(summary)} -> {stage_dir}")
    distributed.barrier()  # the others read what rank 0 wrote
    if not distributed.is_main():
        summary = json.loads((stage_dir / "summary.json").read_text())
    return summary


# The last step of `picochat run`: report.md and plots/ from the stages' files. Not a stage with
# outputs to reuse: it is rewritten every time (in seconds, when its model comparison is reused).
REPORT = "report"
QUICK_STAGES = ("world", "tokenizer")  # seconds: the time estimate is said after them, with their data at hand


def run_pipeline(cfg: RunConfig, out: Path, stages: list[str] | None = None, show_progress: bool = True) -> dict:
    """Run `stages` (default: the run's own, `cfg.stages`, then the report), reusing the complete ones."""
    check_run(cfg, stages)
    out = Path(out)
    names = stages or [*run_stages(cfg), REPORT]
    unknown = [n for n in names if n not in STAGES and n != REPORT]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; stages are: {', '.join([*STAGES, REPORT])}")
    ordered = [n for n in STAGES if n in names] + ([REPORT] if REPORT in names else [])
    if distributed.is_main():  # the resolved config of the whole run, also when every stage is reused
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    t0 = time.perf_counter()
    estimate: dict[str, float | None] | None = None
    summaries = {}
    for name in ordered:
        if estimate is None and name not in QUICK_STAGES and distributed.is_main():
            estimate = print_plan(cfg, out, ordered[ordered.index(name):])
        if name == REPORT:
            if distributed.is_main():
                from picochat.report import write_report

                summaries[name] = write_report(cfg, out, show_progress)
            continue
        summaries[name] = run_stage(name, cfg, out, show_progress)
    if distributed.is_main():
        from picochat.run.estimate import fmt_seconds

        planned = sum(v for v in (estimate or {}).values() if v is not None)
        print(f"[run] finished in {fmt_seconds(time.perf_counter() - t0)}"
              + (f" (estimated {fmt_seconds(planned)})" if planned else ""))
    return summaries


def print_plan(cfg: RunConfig, out: Path, names: list[str]) -> dict[str, float | None]:
    """Say, before the long stages start, what each stage will do (reuse, resume or run) and about
    how long it will take on this machine; returns the estimates (None: seconds; 0: reused)."""
    from picochat.run.estimate import estimate_seconds, fmt_seconds, measure_speeds

    status = {n: stage_status(n, cfg, out) for n in names if n in STAGES}
    if REPORT in names:  # its model comparison is redone when any model it compares is
        status[REPORT] = "todo" if any(s != "done" for s in status.values()) \
            or not (out / "report" / "compare.json").exists() else "done"
    todo = [n for n in names if status[n] != "done"]
    if not todo:
        return {}
    tokenizer = out / "tokenizer" / "summary.json"
    vocab = json.loads(tokenizer.read_text())["vocab_size"] if tokenizer.exists() else cfg.tokenizer.vocab_size
    speeds = measure_speeds(cfg, vocab)
    estimate = {n: 0.0 for n in names if n not in todo} | estimate_seconds(cfg, out, todo, speeds)
    print(f"[run] plan for {out} (this machine: {speeds.train_tokens_per_s:,.0f} training tokens/s, "
          f"{speeds.sample_step_s * 1000:.0f} ms per sampling step of 64 answers):")
    for n in names:
        if n not in todo:
            what, when = "reuse", "-"
        else:
            resume = (out / n / "checkpoint").exists() and status[n] == "todo"
            what = "resume" if resume else "redo" if status[n] == "stale" else "run"
            when = "seconds" if estimate[n] is None else ("at most " if resume else "~") + fmt_seconds(estimate[n])
        print(f"  {n:<10} {what:<7} {when}")
    total = sum(v for v in estimate.values() if v)
    print(f"  estimated total ~{fmt_seconds(total)} (another program using the CPU slows it down; "
          "progress bars show each stage's own ETA)")
    return estimate
