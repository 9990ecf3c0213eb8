"""The one stage registry: each stage's name, the config sections and stages it reads, and the
function that runs it; and from that, each stage's fingerprint and status in a run directory.

A stage is complete when its `summary.json` exists and its `stage.json` carries the stage's
fingerprint: a hash of the config sections it reads and of the fingerprints of the stages it
reads from. A complete stage whose fingerprint still matches is reused; a stage whose inputs
changed is redone (and so is everything downstream, since their fingerprints change too).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from picochat.config import RunConfig
from picochat.layout import STAGE_NAMES, stage_reference
from picochat.stages import dpo, label, ppo, pretrain, rm, rounds, sft, tokenizer, world
from picochat.stages.tokenizer import tokenizer_corpus

StageRun = Callable[[RunConfig, Path, bool], dict]  # (cfg, run directory, show_progress) -> summary


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]  # config sections the stage reads
    upstream: tuple[str, ...]  # stages whose outputs it may read (upstream_of says which it does)
    run: StageRun
    distributed: bool = False  # under torchrun all processes run it (training); else rank 0 alone


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("world", ("world", "chat"), (), world.run),
        Stage("tokenizer", ("tokenizer",), ("world",), tokenizer.run),
        Stage("pretrain", ("model", "pretrain"), ("tokenizer",), pretrain.run, distributed=True),
        Stage("sft", ("sft",), ("pretrain", "world"), sft.run, distributed=True),
        Stage("label", ("label",), ("sft", "world"), label.run),
        Stage("rm", ("rm",), ("label", "sft"), rm.run, distributed=True),
        Stage("ppo", ("ppo",), ("sft", "rm", "world"), ppo.run, distributed=True),
        Stage("dpo", ("dpo",), ("sft", "label", "world"), dpo.run, distributed=True),
        Stage("rounds", ("rlhf", "label", "rm", "ppo"), ("sft", "label", "rm", "ppo", "world"), rounds.run),
    )
}
assert tuple(STAGES) == STAGE_NAMES, "layout.STAGE_NAMES and the registry list the stages in one order"


# Settings added after runs had been made with the code before them, and the value that computes
# what that code computed. At that value a setting is left out of the fingerprint, so those runs are
# reused, not redone; any other value changes the fingerprint as every setting does.
ADDED_SETTINGS = {
    "ppo": {"reward": "rm", "samples_per_prompt": 1, "advantage": "gae", "kl_penalty": "reward",
            "whiten_advantages": True, "trainable": "all", "entropy_rows": "all"},
    "label": {"task_mix": "natural"},
    "rm": {"ensemble": 1, "ensemble_combine": "mean_minus_std", "ensemble_std_coef": 1.0},
}


def stage_fingerprint(name: str, cfg: RunConfig) -> str:
    stage = STAGES[name]
    d = cfg.to_dict()
    parts = {s: d[s] for s in stage.sections}
    if name == "rounds":
        # Round r depends on the rounds before it, not on how many follow: more rounds extend the
        # stage, fewer end it sooner, and the finished rounds are reused (see stage_status).
        parts["rlhf"] = {k: v for k, v in parts["rlhf"].items() if k != "rounds"}
    for section, added in ADDED_SETTINGS.items():
        if section in parts:
            parts[section] = {k: v for k, v in parts[section].items() if k not in added or v != added[k]}
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
        pcfg = cfg.ppo
        reward = stage_reference(pcfg.reward_model, "rm") if pcfg.reward == "rm" else None
        # the value model (gae only) starts from value_init, else the reward model, else the policy's start
        value = stage_reference(pcfg.value_init, reward) if pcfg.advantage == "gae" else None
        needed = {stage_reference(pcfg.init, "sft"), reward, value, "world" if not pcfg.prompts else None}
    elif name == "dpo":
        needed = {stage_reference(cfg.dpo.init, "sft")} | ({"label", "world"} if not cfg.dpo.sources else set())
    else:
        needed = set(stage.upstream)
    return [u for u in stage.upstream if u in needed] + [u for u in STAGES if u in needed and u not in stage.upstream]


def run_stages(cfg: RunConfig) -> list[str]:
    """The stages this run has (`stages:` in the config; empty = all, the rounds stage only with
    rlhf.rounds > 1), checked, in pipeline order."""
    names = list(cfg.stages) or [n for n in STAGES if n != "rounds" or cfg.rlhf.rounds > 1]
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)} in stages; stages are: {', '.join(STAGES)}")
    if "rounds" in names and cfg.rlhf.rounds == 1:
        raise ValueError("stages lists rounds and rlhf.rounds is 1: set rlhf.rounds=2 or more for later RLHF rounds")
    return [n for n in STAGES if n in names]


def stage_status(name: str, cfg: RunConfig, out: Path) -> str:
    """'done' (complete, inputs unchanged), 'stale' (outputs from other inputs), or 'todo'."""
    stage_dir = out / name
    marker = stage_dir / "stage.json"
    if not marker.exists():
        return "stale" if stage_dir.exists() and any(stage_dir.iterdir()) else "todo"
    if json.loads(marker.read_text())["fingerprint"] != stage_fingerprint(name, cfg):
        return "stale"
    summary = stage_dir / "summary.json"
    if not summary.exists():
        return "todo"
    if name == "rounds" and len(json.loads(summary.read_text())["rounds"]) != cfg.rlhf.rounds:
        return "todo"  # another number of rounds: run on, reusing each round finished before
    return "done"
