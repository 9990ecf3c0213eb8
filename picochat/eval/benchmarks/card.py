"""The evaluation card: a model's scores on standard benchmarks, in two forms.

- "loglik" (every model, as lm-evaluation-harness scores them): a multiple-choice item is scored
  by the log-likelihood of each choice after its prompt; `acc` takes the most likely choice,
  `acc_norm` the most likely per character of the choice (the harness's length normalisation).
  GSM8K is answered greedily after its prompt and its final number compared.
- "chat" (chat models, judged as they are used): the question and its lettered options go into
  the chat template as a user turn, the model answers greedily, and the letter (or, for GSM8K,
  the last number) is read from the reply; a reply naming no option counts as wrong.

Each task reports its main metric with a 95% interval, the chance level (the mean of 1/choices
over its items; 0 for GSM8K) and a centred score, (score - chance) / (1 - chance): 0 is chance, 1
is perfect, so tiny models are not all "25%". The card's `core` is the mean centred score.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Sequence

from picochat.core.chat import render_prompt
from picochat.core.generate import SamplingConfig
from picochat.core.tokenizer import Tokenizer
from picochat.eval.benchmarks.answers import (
    answer_matches,
    chosen_letter,
    flexible_answer,
    letters,
    strict_answer,
)
from picochat.eval.benchmarks.items import ChoiceItem, GenerationItem
from picochat.eval.benchmarks.loglikelihood import continuation_logprobs, encode_pair
from picochat.eval.benchmarks.tasks import TARGET_DELIMITER, LoadedTask, with_shots
from picochat.eval.gold_eval import answer_token_prompts

FORMS = ("loglik", "chat")
CHAT_MODEL_STAGES = ("sft", "ppo", "dpo")  # models trained on conversations: asked in the chat form too
# The metric each task is usually quoted by (Open LLM Leaderboard, the harness's READMEs).
MAIN_METRIC = {"arc_easy": "acc", "arc_challenge": "acc_norm", "hellaswag": "acc_norm", "commonsense_qa": "acc",
               "cmmlu": "acc", "truthfulqa": "acc", "gsm8k": "exact_match"}
CHAT_INSTRUCTION = {"en": "Answer with the letter of the correct option.", "zh": "请直接给出正确答案的选项字母。"}
GSM8K_CHAT_INSTRUCTION = "Solve the problem and end with the final number."


def card_forms(stage: str | None, requested: Sequence[str] = ()) -> list[str]:
    """The forms a model of `stage` is scored in: `requested` (chat only for chat models), or by
    default loglik for every model and chat as well for the chat models."""
    forms = list(requested) or list(FORMS)
    return [f for f in forms if f == "loglik" or stage in CHAT_MODEL_STAGES]


def mean_with_interval(values: Sequence[float]) -> dict:
    """Mean and its 95% normal interval from the sample standard error (the harness's stderr)."""
    n = len(values)
    mean = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": n}


def _summary(task: str, form: str, metrics: dict[str, list[float]], chance: float, seconds: float,
             extra: dict | None = None) -> dict:
    main = MAIN_METRIC[task] if MAIN_METRIC[task] in metrics else "acc"
    score = mean_with_interval(metrics[main])
    n = score["n"]
    return {
        "task": task, "form": form, "n": n, "metric": main, "score": score["mean"], "ci95": score["ci95"],
        **{name: statistics.fmean(values) for name, values in metrics.items()},
        "chance": chance,
        "centred": (score["mean"] - chance) / (1 - chance),
        "items_per_s": n / seconds if seconds > 0 else float("inf"),
        "seconds": seconds,
        **(extra or {}),
        "per_item": metrics[main],  # for paired comparisons between models on the same items
    }


def choice_predictions(loglikelihoods: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """The choice `acc` picks (highest log-likelihood) and the one `acc_norm` picks (highest
    log-likelihood per character of the choice text, the harness's normalisation). Ties go to
    the first, as numpy's argmax does."""
    per_char = [ll / len(choice) for ll, choice in zip(loglikelihoods, choices)]
    first_best = lambda values: max(range(len(values)), key=values.__getitem__)  # noqa: E731
    return first_best(list(loglikelihoods)), first_best(per_char)


def score_choices(model, tokenizer: Tokenizer, loaded: LoadedTask, *, shots: int, precision: str,
                  batch_size: int, show_progress: bool) -> dict:
    """acc and acc_norm of every multiple-choice item by log-likelihood, with each choice's value."""
    items: list[ChoiceItem] = loaded.items  # type: ignore[assignment]
    requests = []
    for item in items:
        context = with_shots(item, loaded.fewshot_pool, shots)
        requests += [encode_pair(tokenizer, context, TARGET_DELIMITER + choice) for choice in item.choices]
    start = time.perf_counter()
    results = continuation_logprobs(model, requests, precision=precision, batch_size=batch_size,
                                    show_progress=show_progress, desc=f"{loaded.task.name} (loglik)")
    seconds = time.perf_counter() - start
    acc, acc_norm, loglikelihoods, at = [], [], [], 0
    for item in items:
        values = [ll for ll, _ in results[at:at + len(item.choices)]]
        at += len(item.choices)
        pred, pred_norm = choice_predictions(values, item.choices)
        acc.append(float(pred == item.gold))
        acc_norm.append(float(pred_norm == item.gold))
        loglikelihoods.append(values)
    chance = statistics.fmean(item.chance for item in items)
    summary = _summary(loaded.task.name, "loglik", {"acc": acc, "acc_norm": acc_norm}, chance, seconds)
    summary["loglikelihoods"] = loglikelihoods
    return summary


def greedy_replies(model, tokenizer: Tokenizer, prompts: list[list[int]], *, max_new_tokens: int, precision: str,
                   batch_size: int, show_progress: bool, desc: str) -> tuple[list[str], int]:
    """Greedy replies (text) to token-id prompts, each cut from the left to leave room for
    `max_new_tokens` (at most half the model's context, so a prompt keeps the other half); also
    how many prompts had to be cut."""
    max_new_tokens = min(max_new_tokens, model.cfg.max_seq_len // 2)
    room = model.cfg.max_seq_len - max_new_tokens
    n_cut = sum(len(p) > room for p in prompts)
    answers = answer_token_prompts(model, tokenizer, [p[-room:] for p in prompts],
                                   SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0), precision,
                                   batch_size, show_progress, desc)
    return [text for text, _ in answers], n_cut


def answer_gsm8k(model, tokenizer: Tokenizer, loaded: LoadedTask, *, form: str, shots: int, precision: str,
                 max_new_tokens: int, batch_size: int, show_progress: bool) -> dict:
    """Exact match of the final number, greedy, after the harness's prompt or in the chat template."""
    items: list[GenerationItem] = loaded.items  # type: ignore[assignment]
    if form == "loglik":
        prompts = [tokenizer.encode(with_shots(item, loaded.fewshot_pool, shots)) for item in items]
    else:
        prompts = [render_prompt(tokenizer, [{"role": "user", "content": f"{item.question}\n{GSM8K_CHAT_INSTRUCTION}"}])
                   for item in items]
    start = time.perf_counter()
    replies, n_cut = greedy_replies(model, tokenizer, prompts, max_new_tokens=max_new_tokens, precision=precision,
                                    batch_size=batch_size, show_progress=show_progress, desc=f"gsm8k ({form})")
    seconds = time.perf_counter() - start
    if form == "loglik":  # the harness stops at the next "Question:"
        replies = [reply.split("Question:")[0] for reply in replies]
    flexible = [float(answer_matches(flexible_answer(r), item.answer)) for r, item in zip(replies, items)]
    strict = [float(answer_matches(strict_answer(r), item.answer)) for r, item in zip(replies, items)]
    return _summary("gsm8k", form, {"exact_match": flexible, "exact_match_strict": strict}, 0.0, seconds,
                    {"prompts_cut": n_cut, "replies": replies[:20]})


def chat_options(item: ChoiceItem) -> tuple[tuple[str, ...], int]:
    """The options in the order the chat form shows them, and the gold's position. TruthfulQA's
    correct answer is always first in the data, so its options are shuffled (fixed per item)."""
    if item.task != "truthfulqa":
        return item.options, item.gold
    order = list(range(len(item.options)))
    random.Random(f"{item.task}:{item.item_id}").shuffle(order)
    return tuple(item.options[i] for i in order), order.index(item.gold)


def answer_choices_in_chat(model, tokenizer: Tokenizer, loaded: LoadedTask, *, precision: str, batch_size: int,
                           show_progress: bool, max_new_tokens: int = 16) -> dict:
    """Accuracy of a chat model's lettered answers; replies that name no option count as wrong."""
    items: list[ChoiceItem] = loaded.items  # type: ignore[assignment]
    instruction = CHAT_INSTRUCTION[loaded.task.language]
    prompts, golds, sizes = [], [], []
    for item in items:
        options, gold = chat_options(item)
        listed = "\n".join(f"{letter}. {option}" for letter, option in zip(letters(len(options)), options))
        question = f"{item.question}\n{listed}\n{instruction}"
        prompts.append(render_prompt(tokenizer, [{"role": "user", "content": question}]))
        golds.append(gold)
        sizes.append(len(options))
    start = time.perf_counter()
    replies, n_cut = greedy_replies(model, tokenizer, prompts, max_new_tokens=max_new_tokens, precision=precision,
                                    batch_size=batch_size, show_progress=show_progress,
                                    desc=f"{loaded.task.name} (chat)")
    seconds = time.perf_counter() - start
    picked = [chosen_letter(reply, n) for reply, n in zip(replies, sizes)]
    acc = [float(p == g) for p, g in zip(picked, golds)]
    chance = statistics.fmean(item.chance for item in items)
    return _summary(loaded.task.name, "chat", {"acc": acc}, chance, seconds,
                    {"answered": sum(p is not None for p in picked) / len(picked), "prompts_cut": n_cut,
                     "replies": replies[:20]})


def evaluate_task(model, tokenizer: Tokenizer, loaded: LoadedTask, form: str, *, shots: int = 0,
                  precision: str = "fp32", batch_size: int = 32, max_new_tokens: int = 128,
                  show_progress: bool = False) -> dict:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if loaded.task.generative:
        return answer_gsm8k(model, tokenizer, loaded, form=form, shots=shots, precision=precision,
                            max_new_tokens=max_new_tokens, batch_size=batch_size, show_progress=show_progress)
    if form == "loglik":
        return score_choices(model, tokenizer, loaded, shots=shots, precision=precision, batch_size=batch_size,
                             show_progress=show_progress)
    return answer_choices_in_chat(model, tokenizer, loaded, precision=precision, batch_size=batch_size,
                                  show_progress=show_progress)


def evaluate_card(model, tokenizer: Tokenizer, loaded_tasks: list[LoadedTask], forms: Sequence[str], **kwargs) -> dict:
    """Every task in every form: {"results": {form: {task: summary}}, "core": {form: mean centred}}."""
    results = {form: {lt.task.name: evaluate_task(model, tokenizer, lt, form, **kwargs) for lt in loaded_tasks}
               for form in forms}
    core = {form: statistics.fmean(r["centred"] for r in by_task.values()) for form, by_task in results.items()}
    return {"results": results, "core": core}


def card_markdown(card: dict) -> str:
    """One table per form: task, items, metric, score with its 95% interval, chance, centred."""
    lines = []
    for form, by_task in card["results"].items():
        lines += [f"**{form}** form (CORE, the mean centred score: {card['core'][form]:+.3f})", "",
                  "| task | items | metric | score | 95% CI | chance | centred |", "|---|---|---|---|---|---|---|"]
        for name, r in by_task.items():
            lo, hi = r["ci95"]
            lines.append(f"| {name} | {r['n']} | {r['metric']} | {r['score']:.3f} | {lo:.3f}…{hi:.3f} | "
                         f"{r['chance']:.3f} | {r['centred']:+.3f} |")
        lines.append("")
    return "\n".join(lines)
