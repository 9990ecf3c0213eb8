"""The before/after comparison: every model of a run answers the same held-out prompts.

The pretrained, SFT, PPO and DPO models (and the last RLHF round's policy, with rlhf.rounds > 1)
each answer one shared set of held-out prompts, greedily and with one sample at temperature 1 (the
distribution RLHF optimises). Every answer is scored by the run's reward model and, on the
built-in world, by the gold scorer. The per-prompt results go to `<out>/report/compare.json` and
are reused while the models, the reward model and the report config are unchanged, so `picochat
report` regenerates the text and plots in seconds.

A model, the reward model or the gold scorer that the run does not have is left out: its scores are
None and the report prints "n/a".
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from picochat.config import RunConfig
from picochat.core.chat import render_prompt
from picochat.core.checkpoint import TOKENIZER_FILE, read_model_config
from picochat.core.generate import SamplingConfig
from picochat.core.io import atomic_write_json
from picochat.core.precision import default_device, resolve_precision
from picochat.core.threads import torch_threads
from picochat.core.tokenizer import Tokenizer
from picochat.data.preferences import read_preferences
from picochat.eval.answer_cache import CACHE_VERSION, AnswerCache, weights_digest
from picochat.eval.gold_eval import answer_prompts
from picochat.eval.sharpened import SHARPENING_TEMPERATURES, sharpened_gold
from picochat.layout import MODEL_STAGES, answer_cache_dir, load_model, model_tokenizer, policy_of_round, world_file
from picochat.reward_model import load_reward_model
from picochat.train.sft import held_out_subset
from picochat.world import GoldScorer, read_chat_examples, read_world
from picochat.world.text import CJK

# The models compared, in the tables' order: the model stages, and with rlhf.rounds > 1 the last
# round's PPO policy (`rounds`, which lives in the rounds stage's round_<r>/ppo).
MODEL_NAMES = {"pretrain": "pretrained", "sft": "SFT", "ppo": "PPO", "rounds": "PPO, last round", "dpo": "DPO"}
DECODINGS = {"sampled": 1.0, "greedy": 0.0}  # name -> temperature
# 2: each answer's row holds the gold points it lost, by part (GoldScore.lost_points).
COMPARISON_VERSION = 2


@dataclass
class HeldOutPrompt:
    messages: list[dict]  # OpenAI-style, ending with the user turn to answer
    task: str  # the world task type, or the record's "task", or "all"
    lang: str  # "en" | "zh" (world prompts know it; others: "zh" when the text has CJK characters)


def held_out_prompts(out: Path, n: int, fits=None) -> tuple[list[HeldOutPrompt], str]:
    """(up to n held-out chat prompts, the file they come from): the world's test prompts (the ones
    SFT, PPO and DPO are evaluated on), else the prompts of the labeling stage's held-out file.
    Prompts a model trained on are never used; a run with neither file has no comparison (its PPO
    and DPO summaries still hold their own before/after on held-out prompts). `fits(messages)`,
    when given, drops prompts before the n are picked (e.g. those too long for the models)."""
    fits = fits or (lambda messages: True)
    world_test = out / "world" / "chat_test.jsonl"
    if world_test.exists():
        examples = held_out_subset([e for e in read_chat_examples(world_test) if fits(e.prompt())], n)
        return [HeldOutPrompt(e.prompt(), e.task, e.lang) for e in examples], str(world_test)
    label_test = out / "label" / "preferences_test.jsonl"
    if label_test.exists():
        records, _ = read_preferences(label_test, skip_invalid=True)
        unique: dict[str, HeldOutPrompt] = {}
        for r in records:
            if r.prompt is not None:
                text = " ".join(m["content"] for m in r.prompt)
                unique.setdefault(repr(r.prompt), HeldOutPrompt(
                    [dict(m) for m in r.prompt], str(r.meta.get("task") or "all"),
                    str(r.meta.get("lang") or ("zh" if CJK.search(text) else "en"))))
        return held_out_subset([p for p in unique.values() if fits(p.messages)], n), str(label_test)
    return [], ""


def answer_room(cfg: RunConfig, models: dict[str, Path]):
    """A `fits(messages)` test for held-out prompts: True when every finished model of the run
    (`compared_models`) can answer the prompt with report.max_new_tokens of room (long public
    prompts, e.g. HH-RLHF dialogues, would otherwise leave the whole batch no room). None when no
    model is finished."""
    limits = []
    for model_dir in models.values():
        model_cfg, _ = read_model_config(model_dir)
        limits.append((Tokenizer.load(model_dir / TOKENIZER_FILE), model_cfg.max_seq_len - cfg.report.max_new_tokens))
    if not limits:
        return None
    return lambda messages: all(len(render_prompt(tok, messages)) <= limit for tok, limit in limits)


def _stage_fingerprint(stage_dir: Path) -> str | None:
    """What identifies a finished stage's model: its summary's fingerprint (or the file's stamp)."""
    summary = stage_dir / "summary.json"
    if not summary.exists() or not (stage_dir / "model.safetensors").exists():
        return None
    fp = json.loads(summary.read_text(encoding="utf-8")).get("fingerprint")
    if fp:
        return fp
    st = (stage_dir / "model.safetensors").stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def compared_models(out: Path) -> dict[str, Path]:
    """{name in MODEL_NAMES: model directory} of the run's finished models: the model stages', and
    the last RLHF round's policy when the rounds stage ran later rounds."""
    models = {m: out / m for m in MODEL_STAGES if _stage_fingerprint(out / m) is not None}
    rounds = out / "rounds" / "summary.json"
    if rounds.exists():
        n_rounds = len(json.loads(rounds.read_text(encoding="utf-8")).get("rounds", []))
        last = policy_of_round(out, n_rounds)
        if n_rounds > 1 and _stage_fingerprint(last) is not None:
            models["rounds"] = last
    return {m: models[m] for m in MODEL_NAMES if m in models}


def comparison_key(cfg: RunConfig, out: Path, prompts: list[HeldOutPrompt], models: dict[str, Path]) -> dict:
    blob = json.dumps([asdict(p) for p in prompts], sort_keys=True, ensure_ascii=False)
    later = models.get("rounds")  # in the key only when there is one: earlier keys stay valid
    return {
        "version": COMPARISON_VERSION,
        "report": {k: v for k, v in asdict(cfg.report).items()
                   if k in ("eval_prompts", "max_new_tokens", "seed", "best_of_n_prompts", "best_of_n")},
        "models": {m: _stage_fingerprint(out / m) for m in MODEL_STAGES}
        | ({"rounds": f"{later.relative_to(out)}:{_stage_fingerprint(later)}"} if later else {}),
        "reward_model": _stage_fingerprint(out / "rm"),
        "gold": world_file(out).exists(),
        "sharpened": list(SHARPENING_TEMPERATURES),
        "prompts": hashlib.sha256(blob.encode()).hexdigest()[:16],
    }


def _kept_comparison(cfg: RunConfig, out: Path):
    """(compare.json's path, the models, the prompts, their source, how many of them get best-of-n
    samples, the key, the kept comparison when its key is this one, else None)."""
    path = out / "report" / "compare.json"
    models = compared_models(out)
    prompts, source, n_best = report_prompts(cfg, out, models)
    key = comparison_key(cfg, out, prompts, models)
    cached = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    kept = cached if cached is not None and cached.get("key") == key else None
    return path, models, prompts, source, n_best, key, kept


def comparison_is_kept(cfg: RunConfig, out: Path) -> bool:
    """Whether `compare_models` would reuse `<out>/report/compare.json` rather than compute."""
    return _kept_comparison(cfg, Path(out))[-1] is not None


def compare_models(cfg: RunConfig, out: Path, show_progress: bool = True) -> dict:
    """Answers and scores of every finished model on the same held-out prompts (reused from
    `<out>/report/compare.json` when nothing they depend on changed)."""
    out = Path(out)
    path, models, prompts, source, n_best, key, cached = _kept_comparison(cfg, out)
    if cached is not None:
        print(f"[report] models, reward model and prompts unchanged: reusing the comparison in {path}")
        return cached
    t0 = time.perf_counter()
    result = {"key": key, "source": source, "prompts": [asdict(p) for p in prompts], "models": {}}
    if (prompts and models) or n_best:
        result |= _with_report_threads(cfg, lambda device, precision: _answer_and_score(
            cfg, out, prompts, models, n_best, key, device, precision, source, show_progress))
    result["wall_s"] = time.perf_counter() - t0
    atomic_write_json(path, result)
    return result


def _with_report_threads(cfg: RunConfig, work):
    """`work(device, precision)` with report.threads torch threads (restored afterwards)."""
    device = default_device()
    precision = resolve_precision("auto", device)
    with torch_threads(cfg.report.threads if device.type == "cpu" else 0):
        return work(device, precision)


def _answer_and_score(cfg, out, prompts, models, n_best, key, device, precision, source, show_progress) -> dict:
    """{"models": every model's answers and scores, "best_of_n": the SFT model's samples (when
    n_best)}, scored by one reward model and one gold scorer loaded once for both. Answers come
    from the run's answer cache when it has them (`picochat.report.ahead` fills it early)."""
    reward = load_reward_model(out / "rm", device) if key["reward_model"] else None
    gold = GoldScorer(read_world(world_file(out))[0]) if key["gold"] else None
    result = {}
    if prompts and models:
        print(f"[report] {len(models)} models answer the same {len(prompts)} held-out prompts from {source} "
              f"(greedy and one T=1 sample each)")
        result["models"] = _answer_and_score_on(cfg, out, prompts, models, reward, gold, device, precision,
                                                show_progress)
    if n_best:
        print(f"[report] best-of-n: the SFT model answers {n_best} held-out prompts {cfg.report.best_of_n} times")
        sft, meta = load_model(out / "sft", device)  # both below sample the SFT model
        tokenizer = model_tokenizer(meta)
        messages = best_of_n_messages(cfg, prompts[:n_best])
        answers = best_of_n_answers(cfg, out, sft, tokenizer, messages, precision, show_progress)
        result["best_of_n"] = _score_best_of_n(cfg, messages, answers, reward, gold)
        result["sharpened"] = sharpened_sft(cfg, out, sft, tokenizer, prompts[:n_best], gold, precision)
    return result


def report_prompts(cfg: RunConfig, out: Path, models: dict[str, Path]) -> tuple[list[HeldOutPrompt], str, int]:
    """(the held-out prompts every model answers, their source, how many of them the SFT model
    answers report.best_of_n times: 0 without an SFT model or a gold scorer)."""
    prompts, source = (held_out_prompts(out, cfg.report.eval_prompts, answer_room(cfg, models))
                       if cfg.report.eval_prompts else ([], ""))
    n_best = min(cfg.report.best_of_n_prompts, len(prompts)) \
        if _stage_fingerprint(out / "sft") is not None and world_file(out).exists() else 0
    return prompts, source, n_best


def _answer_cache(out: Path, model) -> tuple[AnswerCache, str]:
    return AnswerCache(answer_cache_dir(out)), weights_digest(model)


def _answer_room(cfg, model, tokenizer, messages) -> int:
    """report.max_new_tokens, or less when the longest prompt leaves less room in the context."""
    longest = max(len(render_prompt(tokenizer, m)) for m in messages)
    return min(cfg.report.max_new_tokens, model.cfg.max_seq_len - longest)


def sharpened_sft(cfg: RunConfig, out: Path, model, tokenizer, prompts: list[HeldOutPrompt], gold,
                  precision) -> list[dict]:
    """The SFT model at each of SHARPENING_TEMPERATURES on the best-of-n prompts, 4 answers each:
    gold and KL. Kept in <out>/report/sharpened.json while the SFT model, the prompts and the
    settings are the same."""
    messages = [p.messages for p in prompts]
    max_new, seed = _answer_room(cfg, model, tokenizer, messages), cfg.report.seed + 2
    blob = json.dumps([messages, max_new, seed, precision, list(SHARPENING_TEMPERATURES), CACHE_VERSION,
                       _stage_fingerprint(out / "sft")], sort_keys=True, ensure_ascii=False)
    key = hashlib.sha256(blob.encode()).hexdigest()[:16]
    path = out / "report" / "sharpened.json"
    kept = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    if kept is not None and kept.get("key") == key:
        print(f"[report] the SFT model at lower temperatures: read from {path}")
        return kept["temperatures"]
    result = sharpened_gold(model, tokenizer, messages, gold, precision=precision, n_samples=4,
                            max_new_tokens=max_new, seed=seed)
    atomic_write_json(path, {"key": key, "temperatures": result})
    return result


def best_of_n_messages(cfg: RunConfig, prompts: list[HeldOutPrompt]) -> list[list[dict]]:
    """Each best-of-n prompt report.best_of_n times, in a row."""
    return [p.messages for p in prompts for _ in range(cfg.report.best_of_n)]


def best_of_n_answers(cfg, out, model, tokenizer, messages, precision, show_progress) -> list[tuple[str, bool]]:
    """The SFT model's T=1 answers to `best_of_n_messages` (the answer cache's, when it has them)."""
    sampling = SamplingConfig(max_new_tokens=_answer_room(cfg, model, tokenizer, messages), temperature=1.0,
                              seed=cfg.report.seed + 1)
    return answer_prompts(model, tokenizer, messages, sampling, precision, show_progress=show_progress,
                          desc=f"SFT: best-of-{cfg.report.best_of_n} samples", cache=_answer_cache(out, model))


def _score_best_of_n(cfg, messages, answers, reward, gold) -> list[dict]:
    """The best-of-n answers' gold (and RM) scores: [{"gold": [...], "rm": [...] or None}] per
    prompt, for `best_of_n.best_of_n_curves`."""
    k = cfg.report.best_of_n
    texts, finished = [t for t, _ in answers], [f for _, f in answers]
    gold_scores = [gold.score(m, t, finished=f) for m, t, f in zip(messages, texts, finished)]
    rm_scores = reward.score(messages, texts, finished) if reward else None
    return [{"gold": gold_scores[i * k:(i + 1) * k], "rm": rm_scores[i * k:(i + 1) * k] if rm_scores else None}
            for i in range(len(messages) // k)]


def model_answers(cfg: RunConfig, out: Path, name: str, model, tokenizer, messages: list[list[dict]], precision,
                  show_progress: bool = False) -> dict[str, list[tuple[str, bool]]]:
    """{decoding: (text, finished) per prompt} of model `name` for each of DECODINGS (the answer
    cache's, when it has them)."""
    max_new = _answer_room(cfg, model, tokenizer, messages)
    if max_new < 1:
        longest = model.cfg.max_seq_len - max_new
        raise ValueError(f"held-out prompts of up to {longest} tokens leave {name} (max_seq_len "
                         f"{model.cfg.max_seq_len}) no room to answer; use shorter prompts or a longer "
                         "model.max_seq_len")
    cache = _answer_cache(out, model)
    return {decoding: answer_prompts(model, tokenizer, messages,
                                     SamplingConfig(max_new_tokens=max_new, temperature=temperature,
                                                    seed=cfg.report.seed),
                                     precision, show_progress=show_progress,
                                     desc=f"{MODEL_NAMES[name]}: {decoding}", cache=cache)
            for decoding, temperature in DECODINGS.items()}


def _answer_and_score_on(cfg, out, prompts, models, reward, gold, device, precision, show_progress) -> dict:
    """models: {name: model directory} (`compared_models`)."""
    messages = [p.messages for p in prompts]
    results: dict[str, dict] = {}
    for name, model_dir in models.items():
        model, meta = load_model(model_dir, device)
        answers = model_answers(cfg, out, name, model, model_tokenizer(meta), messages, precision, show_progress)
        del model
        results[name] = {}
        for decoding, pairs in answers.items():
            texts = [t for t, _ in pairs]
            finished = [f for _, f in pairs]
            rm_scores = reward.score(messages, texts, finished) if reward else [None] * len(texts)
            golds = ([gold.breakdown(m, t, finished=f) for m, t, f in zip(messages, texts, finished)]
                     if gold else [None] * len(texts))
            results[name][decoding] = [
                {"answer": t, "finished": f, "rm": r, "gold": None if g is None else g.total,
                 "lost": None if g is None else g.lost_points()}
                for t, f, r, g in zip(texts, finished, rm_scores, golds)
            ]
    return results


# -- statistics of a comparison (pure functions of compare.json) ------------------------------

def _mean_median(values: list) -> dict:
    xs = [v for v in values if v is not None]
    if not xs:
        return {"mean": None, "median": None}
    return {"mean": statistics.fmean(xs), "median": statistics.median(xs)}


def score_stats(comparison: dict, model: str, decoding: str, group: str | None = None) -> dict:
    """{"n", "gold": {mean, median}, "rm": {mean, median}, "eos_rate"} of one model's answers,
    overall (group=None) or {group value: that dict} grouped by "task" or "lang"."""
    rows = comparison["models"].get(model, {}).get(decoding)
    if rows is None:
        return {}
    prompts = comparison["prompts"]
    if group is not None:
        buckets: dict[str, list[dict]] = defaultdict(list)
        for p, r in zip(prompts, rows):
            buckets[p[group]].append(r)
        return {g: _stats(rs) for g, rs in sorted(buckets.items())}
    return _stats(rows)


def lost_points(comparison: dict, model: str, decoding: str) -> dict | None:
    """The gold points one model's answers lost, per prompt on average, by part: format, style and
    safety (behaviour), and correctness split by task type ("correctness: fact", ...); the values
    sum to 1 - the mean gold score. None without gold scores (or with a comparison written before
    rows held them)."""
    rows = comparison["models"].get(model, {}).get(decoding)
    if not rows or any(r.get("lost") is None for r in rows):
        return None
    lost: dict[str, float] = defaultdict(float)
    for prompt, row in zip(comparison["prompts"], rows):
        for part, points in row["lost"].items():
            if part == "correctness":
                if not points:  # none lost, or a task without knowledge to state (refusal, benign)
                    continue
                part = f"correctness: {prompt['task']}"
            lost[part] += points / len(rows)
    return dict(lost)


def _stats(rows: list[dict]) -> dict:
    return {
        "n": len(rows),
        "gold": _mean_median([r["gold"] for r in rows]),
        "rm": _mean_median([r["rm"] for r in rows]),
        "eos_rate": statistics.fmean(bool(r["finished"]) for r in rows) if rows else None,
    }
