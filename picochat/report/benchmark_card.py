"""The report's benchmark card: every model stage of the run on the same benchmark items.

Each model (pretrained, SFT, PPO, DPO) is scored on `eval.tasks` by `picochat.eval.benchmarks`:
log-likelihood for all, and the chat form as well for the chat models. The cards are kept in
`<out>/report/card_<stage>.json` and reused while the model file and the eval settings are the
same, so `picochat report` rewrites the text in seconds. With no benchmark data configured the
section says how to add it instead.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from picochat.config import EvalConfig, RunConfig
from picochat.core.io import atomic_write_json
from picochat.core.threads import torch_threads
from picochat.eval.benchmarks.card import card_forms, evaluate_card
from picochat.eval.benchmarks.tasks import load_task
from picochat.layout import MODEL_STAGES, load_model_and_tokenizer

PER_ITEM_KEYS = ("per_item", "loglikelihoods", "replies")


def _card_key(ecfg: EvalConfig, model_dir: Path, stage: str, sources: dict[str, str]) -> str:
    weights = model_dir / "model.safetensors"
    stat = weights.stat()
    settings = {k: v for k, v in ecfg.__dict__.items() if k not in ("threads", "data_dir", "sources")}
    # The weights by size and time (a copied run keeps both, so its cards are reused), and the data
    # files by name and size: a card is redone when the model, the settings or the sets change.
    data = {task: [Path(path).name, Path(path).stat().st_size] for task, path in sources.items()}
    blob = json.dumps([settings, card_forms(stage, ecfg.forms), stage, stat.st_size, stat.st_mtime_ns, data],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _card_plan(cfg: RunConfig, out: Path) -> tuple[list[str], list, dict[str, str]] | str:
    """(the model stages to score, the loaded tasks, {task: source}), or why there is no card."""
    ecfg = cfg.eval
    if not ecfg.tasks:
        return "no benchmark tasks (eval.tasks is empty)."
    if not ecfg.data_dir and not ecfg.sources:
        return ("no benchmark data: set eval.data_dir to a folder of local copies of the sets "
                "(arc_easy_test.jsonl.gz, hellaswag_val.jsonl.gz, ... as in the project's shared/data/eval), or "
                "eval.sources, then rerun `picochat report`.")
    # a stage with no form to be scored in (eval.forms=[chat] and the pretrained model) is left out
    stages = [s for s in MODEL_STAGES if (out / s / "model.safetensors").exists() and card_forms(s, ecfg.forms)]
    if not stages:
        return "no trained model in this run yet."
    try:
        loaded = [load_task(name, ecfg.data_dir, limit=ecfg.limit, shots=ecfg.shots,
                            source=ecfg.source_map().get(name, "")) for name in ecfg.tasks]
    except (FileNotFoundError, ValueError) as e:  # a missing or malformed set is named, the report goes on
        return f"benchmark card skipped: {e}"
    return stages, loaded, {lt.task.name: str(lt.source) for lt in loaded}


def _cached_card(path: Path, key: str) -> dict | None:
    if path.exists():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            return cached
    return None


def cards_to_compute(cfg: RunConfig, out: Path) -> list[str]:
    """The model stages whose card `benchmark_cards` would compute now (none kept for them)."""
    plan = _card_plan(cfg, out)
    if isinstance(plan, str):
        return []
    stages, _, sources = plan
    return [s for s in stages
            if _cached_card(out / "report" / f"card_{s}.json", _card_key(cfg.eval, out / s, s, sources)) is None]


def benchmark_cards(cfg: RunConfig, out: Path, show_progress: bool = True, only: tuple[str, ...] | None = None) -> dict:
    """{"cards": {stage: card without per-item lists}, "note": why there is no card, or ""}; of
    the model stages in `only` when given."""
    ecfg = cfg.eval
    plan = _card_plan(cfg, out)
    if isinstance(plan, str):
        return {"cards": {}, "note": plan}
    stages, loaded, sources = plan
    stages = [s for s in stages if only is None or s in only]
    cards = {}
    with torch_threads(ecfg.threads):
        for stage in stages:
            path = out / "report" / f"card_{stage}.json"
            key = _card_key(ecfg, out / stage, stage, sources)
            cached = _cached_card(path, key)
            if cached is not None:
                cards[stage] = cached
                continue
            t0 = time.perf_counter()
            model, tokenizer, _ = load_model_and_tokenizer(out / stage)
            card = evaluate_card(model, tokenizer, loaded, card_forms(stage, ecfg.forms), shots=ecfg.shots,
                                 precision=ecfg.precision, batch_size=ecfg.batch_size,
                                 max_new_tokens=ecfg.max_new_tokens, show_progress=show_progress)
            card.update(key=key, stage=stage, wall_s=time.perf_counter() - t0, sources=sources)
            atomic_write_json(path, card)
            print(f"[report] benchmark card of {stage}: {card['wall_s']:.1f} s")
            cards[stage] = card
    slim = {stage: {**card, "results": {form: {task: {k: v for k, v in r.items() if k not in PER_ITEM_KEYS}
                                                       for task, r in by_task.items()}
                                          for form, by_task in card["results"].items()}}
            for stage, card in cards.items()}
    return {"cards": slim, "note": ""}
