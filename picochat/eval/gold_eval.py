"""Gold-score evaluation: answer held-out world prompts and judge the answers with the gold scorer.

Reports the mean gold score of greedy answers and of samples at temperature 1, per task type and
per language, and best-of-K (the best of K samples per prompt). The gap between one sample and the
best of K is the room that human feedback and RL have to work in.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from picochat.core.chat import render_prompt
from picochat.core.generate import SamplingConfig, generate
from picochat.core.model import GPT
from picochat.core.precision import autocast
from picochat.core.tokenizer import Tokenizer
from picochat.eval.answer_cache import AnswerCache, weights_digest


def answer_prompts(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: list[list[dict]],
    sampling: SamplingConfig,
    precision: str,
    batch_size: int = 64,
    show_progress: bool = False,
    desc: str = "answering",
    cache: tuple[AnswerCache, str] | None = None,
) -> list[tuple[str, bool]]:
    """(response text, finished) for every prompt; finished = the model emitted its end token.

    cache: (an AnswerCache, the model's weights_digest): answers it holds for exactly this call
    are read instead of sampled again, and new ones are stored."""
    ids = [render_prompt(tokenizer, p) for p in prompts]
    if cache is None:
        return answer_token_prompts(model, tokenizer, ids, sampling, precision, batch_size, show_progress, desc)
    store, digest = cache
    key = store.key(model, digest, ids, sampling, precision, batch_size)
    answers = store.get(key, len(ids))
    if answers is not None:
        print(f"{desc}: the same answers as before, read from {store.directory}")
        return answers
    answers = answer_token_prompts(model, tokenizer, ids, sampling, precision, batch_size, show_progress, desc)
    store.put(key, answers)
    return answers


def answer_token_prompts(
    model: GPT,
    tokenizer: Tokenizer,
    ids: list[list[int]],
    sampling: SamplingConfig,
    precision: str,
    batch_size: int = 64,
    show_progress: bool = False,
    desc: str = "answering",
) -> list[tuple[str, bool]]:
    """answer_prompts for prompts already tokenized (e.g. a benchmark's plain-text prompt)."""
    device = next(model.parameters()).device
    stop = (tokenizer.im_end_id, tokenizer.eot_id)
    sampling = SamplingConfig(**{**sampling.__dict__, "stop_ids": stop})
    # Similar lengths in one batch waste less padding; results are put back in prompt order.
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[tuple[str, bool] | None] = [None] * len(ids)
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not show_progress, leave=False):
        chunk = order[start : start + batch_size]
        batch_sampling = sampling
        if sampling.seed is not None:  # a different, reproducible stream per batch
            batch_sampling = SamplingConfig(**{**sampling.__dict__, "seed": sampling.seed + start})
        with torch.no_grad(), autocast(precision, device):
            results = generate(model, [ids[i] for i in chunk], batch_sampling, pad_id=tokenizer.pad_id)
        for i, r in zip(chunk, results):
            out[i] = (tokenizer.decode(r.tokens), r.finish_reason == "stop")
    return out  # type: ignore[return-value]


def _group_means(scores: list[float], keys: list[str]) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for s, k in zip(scores, keys):
        groups[k].append(s)
    return {k: statistics.fmean(v) for k, v in sorted(groups.items())}


def evaluate_gold(
    model: GPT,
    tokenizer: Tokenizer,
    examples: list,
    scorer,
    *,
    precision: str,
    max_new_tokens: int = 96,
    n_samples: int = 4,
    seed: int = 0,
    show_progress: bool = False,
    label: str = "model",
    cache_dir: Path | None = None,
) -> dict:
    """Gold scores of greedy answers and of `n_samples` samples at T=1 on `examples` (ChatExample).

    cache_dir: an AnswerCache directory; answers this model gave before to the same prompts with
    the same settings are read from it instead of sampled again (the SFT model's, which the SFT,
    PPO and DPO stages all evaluate)."""
    longest_prompt = max(len(render_prompt(tokenizer, e.prompt())) for e in examples)
    max_new = min(max_new_tokens, model.cfg.max_seq_len - longest_prompt)
    if max_new < 1:
        raise ValueError("held-out prompts are longer than the model's max_seq_len")
    prompts = [e.prompt() for e in examples]
    tasks = [e.task for e in examples]
    langs = [e.lang for e in examples]

    cache = (AnswerCache(cache_dir), weights_digest(model)) if cache_dir is not None else None
    greedy = answer_prompts(model, tokenizer, prompts, SamplingConfig(max_new_tokens=max_new, temperature=0.0),
                            precision, show_progress=show_progress, desc=f"{label}: greedy", cache=cache)
    greedy_scores = [scorer.score(p, text, finished=fin) for p, (text, fin) in zip(prompts, greedy)]
    result = {
        "n_prompts": len(examples),
        "greedy": statistics.fmean(greedy_scores),
        "greedy_by_task": _group_means(greedy_scores, tasks),
        "greedy_by_lang": _group_means(greedy_scores, langs),
        "greedy_eos_rate": statistics.fmean(fin for _, fin in greedy),
    }
    if n_samples > 0:
        sampled = answer_prompts(model, tokenizer, prompts * n_samples,
                                 SamplingConfig(max_new_tokens=max_new, temperature=1.0, seed=seed),
                                 precision, show_progress=show_progress, desc=f"{label}: T=1 samples",
                                 cache=cache)
        per_sample = [scorer.score(p, text, finished=fin) for p, (text, fin) in zip(prompts * n_samples, sampled)]
        n = len(prompts)
        per_prompt = [[per_sample[k * n + i] for k in range(n_samples)] for i in range(n)]
        best = [max(s) for s in per_prompt]
        result.update({
            "sampled": statistics.fmean(per_sample),
            "sampled_by_task": _group_means(per_sample, tasks * n_samples),
            "sampled_by_lang": _group_means(per_sample, langs * n_samples),
            f"best_of_{n_samples}": statistics.fmean(best),
            f"best_of_{n_samples}_by_task": _group_means(best, tasks),
            "n_samples": n_samples,
            "sampled_per_prompt": [statistics.fmean(s) for s in per_prompt],  # for paired comparisons
            "samples": sampled,  # (text, finished) for prompts * n_samples, e.g. to score with an RM
        })
    result["examples"] = [
        {"task": e.task, "lang": e.lang, "prompt": p[-1]["content"], "answer": text, "score": s}
        for e, p, (text, _), s in zip(examples, prompts, greedy, greedy_scores)
    ]
    return result


def held_out_subset(examples: list, n: int) -> list:
    """Every k-th held-out example, so all task types and languages are represented."""
    if len(examples) <= n:
        return list(examples)
    step = len(examples) / n
    return [examples[int(i * step)] for i in range(n)]


PER_PROMPT_KEYS = ("examples", "sampled_per_prompt", "samples")


def gold_summary(result: dict) -> dict:
    """An evaluate_gold result without its per-prompt lists: the part a summary.json keeps."""
    return {k: v for k, v in result.items() if k not in PER_PROMPT_KEYS}


def paired_difference(a: list[float], b: list[float]) -> dict:
    """Mean of a − b over paired prompts with a 95% normal-approximation confidence interval."""
    d = [x - y for x, y in zip(a, b)]
    mean = statistics.fmean(d)
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"mean": mean, "ci95": [mean - 1.96 * se, mean + 1.96 * se], "n": len(d)}


def gold_gains(after: dict, before: dict) -> dict:
    """Per-prompt paired gains of a tuned model over its starting model (evaluate_gold results on
    the same prompts and seeds): greedy and, when sampled, the mean over samples."""
    gains = {"gold_gain_greedy": paired_difference([e["score"] for e in after["examples"]],
                                                   [e["score"] for e in before["examples"]])}
    if "sampled_per_prompt" in after and "sampled_per_prompt" in before:
        gains["gold_gain_sampled"] = paired_difference(after["sampled_per_prompt"], before["sampled_per_prompt"])
    return gains
