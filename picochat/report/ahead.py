"""The report's work that needs no PPO model, done while PPO still trains.

With DPO beside PPO (`picochat.run.side_by_side`), DPO ends before PPO on the tiny preset (3:20
against 5:43 in a demo on a loaded machine, 2:39 against 3:42 on a quiet one), and its process
would then wait with nothing to do. It does
the report's work that needs only the models already trained instead: the pretrained, SFT and DPO
models' benchmark cards and answers to the report's held-out prompts, the SFT model's best-of-n
samples and its answers at lower temperatures. Each piece lands where the report looks first (the
run's answer cache, report/sharpened.json, report/card_<stage>.json), keyed by everything it
depends on, so the report reads it instead of computing it. A piece is computed by the function
the report calls, on one thread as the report's (`can_work_ahead`), so it is the piece the report
would compute, bit for bit. When PPO is done the parent stops this work (`picochat.run.
side_by_side`): the piece in progress is dropped, and the report computes whatever is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from picochat.config import RunConfig
from picochat.core.precision import default_device, resolve_precision
from picochat.layout import load_model, model_tokenizer, world_file
from picochat.report.benchmark_card import benchmark_cards
from picochat.report.compare import (
    best_of_n_answers,
    best_of_n_messages,
    compared_models,
    model_answers,
    report_prompts,
    sharpened_sft,
)
from picochat.world import GoldScorer, read_world

# The models whose share of the report can be done before PPO ends.
AHEAD_MODELS = ("pretrain", "sft", "dpo")


def can_work_ahead(cfg: RunConfig) -> bool:
    """The report computes on one thread (report.threads 1, eval.threads unset), as a child
    process does: what the child computes ahead is then what the report would."""
    return cfg.report.threads == 1 and not cfg.eval.threads


def report_work_ahead(cfg: RunConfig, out: Path) -> None:
    """Compute the report's pieces that need only AHEAD_MODELS, one after the other, until done
    (or stopped: every finished piece is on disk)."""
    for what, piece in _pieces(cfg, Path(out)):
        print(f"[report] ahead: {what}", flush=True)
        piece()
    print("[report] ahead: all done", flush=True)


def _pieces(cfg: RunConfig, out: Path) -> list[tuple[str, Callable[[], object]]]:
    """(what, work) in the order to do them: benchmark cards and the comparison's pieces in turn,
    so that when PPO ends the two halves the report runs side by side (the comparison, and the
    cards in a child) are left about equally long. On the tiny preset, on one thread: the cards
    15-27 s each, the SFT model at lower temperatures 34 s, its best-of-16 samples 20 s, each
    model's answers 5-11 s."""
    models = {m: d for m, d in compared_models(out).items() if m in AHEAD_MODELS}
    prompts, _, n_best = report_prompts(cfg, out, models)
    device = default_device()
    precision = resolve_precision("auto", device)

    def card(stage: str):
        return f"the benchmark card of {stage}", lambda: benchmark_cards(cfg, out, False, only=(stage,))

    def answers(name: str):
        def work():
            model, meta = load_model(models[name], device)
            model_answers(cfg, out, name, model, model_tokenizer(meta), [p.messages for p in prompts], precision)
        return f"the {name} model's answers to {len(prompts)} held-out prompts", work

    def sharpened():
        sft, meta = load_model(models["sft"], device)
        gold = GoldScorer(read_world(world_file(out))[0])
        sharpened_sft(cfg, out, sft, model_tokenizer(meta), prompts[:n_best], gold, precision)

    def best_of_n():
        sft, meta = load_model(models["sft"], device)
        best_of_n_answers(cfg, out, sft, model_tokenizer(meta), best_of_n_messages(cfg, prompts[:n_best]),
                          precision, False)

    pieces = [card("pretrain")]  # the smallest card first: on a quiet machine DPO ends only ~20 s before PPO
    if n_best:
        pieces += [("the SFT model at lower temperatures", sharpened)]
    pieces += [card("sft")]
    if n_best:
        pieces += [(f"the SFT model's best-of-{cfg.report.best_of_n} samples", best_of_n)]
    pieces += [card("dpo")]
    pieces += [answers(name) for name in ("pretrain", "sft", "dpo") if name in models and prompts]
    return pieces
