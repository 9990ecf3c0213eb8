"""report.md: the text of the report, a pure function of the run's files.

Every figure printed here is read from the run directory (stage summaries and metrics, and the
model comparison in report/compare.json); anything missing prints as "n/a".
"""

from __future__ import annotations

import math

from picochat.eval.gold_eval import paired_difference
from picochat.layout import STAGE_NAMES
from picochat.report.best_of_n import PICKS, best_of_n_curves, reading, rl_points, sharpening_points
from picochat.report.collect import RunFiles, stage_figures
from picochat.report.compare import MODEL_NAMES, lost_points, score_stats
from picochat.report.summary_lines import summary_line
from picochat.world.gold import BEHAVIOUR_PARTS

NA = "n/a"

HOW_TO_READ = """\
**How to read this.** Each stage starts from the model of the stage before it: pretraining teaches
the model the language and the facts of its corpus (it has never seen a chat, so it answers
poorly), SFT teaches it to answer in the assistant format, and PPO and DPO use the ranked answers
to move the SFT model towards what the labeler preferred. Two scores judge every answer. The
*gold score* (0 to 1) comes from a program that knows every fact of the built-in world and checks
correctness, safety and style: it is what we actually want, and the models never see it. The
*reward-model (RM) score* is what the reward model, trained on the labeler's noisy rankings,
believes; it is normalised so that SFT samples score about 0 with a spread of 1, so read it
relative to the SFT row. A healthy RLHF run raises both; an RM score that rises while the gold
score does not is reward hacking (the policy found what the reward model wrongly likes), and the
KL to SFT says how far the tuned model drifted to get there. *T=1 samples* are the distribution
PPO optimises; *greedy* answers are what the model says when it picks its most likely token. A
median far from the mean means a few answers carry the mean; a difference whose 95% interval
contains 0 may be noise. MFU is the share of this machine's measured matmul peak that the training
steps used. A run without the built-in world has no gold scorer: its gold columns read n/a."""


def fmt(value, spec: str = ".3f") -> str:
    if value is None or isinstance(value, bool) or (isinstance(value, float) and math.isnan(value)):
        return NA
    return format(value, spec)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return NA
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def fmt_count(value: float | None) -> str:
    if value is None:
        return NA
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.0f}"


def _cell(text: str, limit: int = 300) -> str:
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or "*(empty)*"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def _final_metrics(stage: str, summary: dict) -> str:
    try:
        return summary_line(stage, summary)
    except (KeyError, TypeError, ValueError):
        return NA


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def stages_section(run: RunFiles, planned: list[str]) -> list[str]:
    """One row per stage of the run (planned: the stages its config has) and per stage with a summary."""
    rows = []
    for stage in [s for s in STAGE_NAMES if s in planned or s in run.summaries]:
        if stage not in run.summaries:
            rows.append([stage, *[NA] * 5, "not run"])
            continue
        f = stage_figures(run, stage)
        mfu = fmt(f["mfu"] * 100 if f["mfu"] is not None else None, ".1f") + ("%" if f["mfu"] is not None else "")
        rows.append([stage, fmt_duration(f["wall_s"]), fmt_count(f["tokens"]), fmt(f["tokens_per_s"], ",.0f"), mfu,
                     fmt(f["peak_memory_mb"], ",.0f") + (" MB" if f["peak_memory_mb"] is not None else ""),
                     _cell(_final_metrics(stage, run.summaries[stage]))])
    total = sum(f for f in (stage_figures(run, s)["wall_s"] for s in run.summaries) if f is not None)
    return [
        "## Stages", "",
        "Wall-clock of each stage as it ran (a reused stage keeps the time it took when it ran). Tokens are "
        "those the stage trained on (label: the answers it sampled; PPO: what its policy and value updates "
        "trained on, per second of its iterations, sampling included, and its MFU counts those updates only). "
        "Peak memory is the process's peak resident memory during the stage.", "",
        *_table(["stage", "wall-clock", "tokens", "tokens/s", "MFU", "peak memory", "final metrics"], rows), "",
        f"Total: {fmt_duration(total if run.summaries else None)} over {_plural(len(run.summaries), 'stage')}.", "",
    ]


def _models(comparison: dict) -> list[str]:
    return [m for m in MODEL_NAMES if m in comparison.get("models", {})]


def _overall_table(comparison: dict, decoding: str) -> list[str]:
    rows = []
    for m in _models(comparison):
        s = score_stats(comparison, m, decoding)
        rows.append([MODEL_NAMES[m], fmt(s["rm"]["mean"]), fmt(s["rm"]["median"]), fmt(s["gold"]["mean"]),
                     fmt(s["gold"]["median"]), fmt(s["eos_rate"], ".2f")])
    return _table(["model", "RM score mean", "RM score median", "gold score mean", "gold score median",
                   "finished"], rows)


def _grouped_table(comparison: dict, group: str) -> list[str]:
    models = _models(comparison)
    stats = {m: score_stats(comparison, m, "sampled", group) for m in models}
    groups = sorted({g for s in stats.values() for g in s})
    rows = []
    for g in groups:
        n = next((stats[m][g]["n"] for m in models if g in stats[m]), 0)
        rows.append([g, str(n),
                     *[fmt(stats[m].get(g, {}).get("gold", {}).get("mean")) for m in models],
                     *[fmt(stats[m].get(g, {}).get("rm", {}).get("mean")) for m in models]])
    names = [MODEL_NAMES[m] for m in models]
    return _table([group, "n", *[f"gold: {n}" for n in names], *[f"RM: {n}" for n in names]], rows)


def _paired(comparison: dict, model: str, base: str, score: str) -> dict | None:
    rows = comparison["models"].get(model, {}).get("sampled")
    base_rows = comparison["models"].get(base, {}).get("sampled")
    if not rows or not base_rows or rows[0][score] is None or base_rows[0][score] is None:
        return None
    return paired_difference([r[score] for r in rows], [r[score] for r in base_rows])


def _gain(d: dict | None) -> str:
    if d is None:
        return NA
    return f"{d['mean']:+.3f} (95% CI {d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f})"


def _summary_before_after(run: RunFiles) -> list[str]:
    """The before/after that PPO and DPO measured themselves (reward-model score of T=1 samples of
    the starting model and the tuned one on held-out prompts): all there is without shared prompts."""
    rows = []
    for m in ("ppo", "dpo"):
        s = run.summary(m)
        if "reward_after_mean" not in s:
            continue
        base = str(s.get("baseline", "before"))
        rows.append([f"{base} (before {MODEL_NAMES[m]}, {m}/summary.json)", fmt(s.get("reward_before_mean")),
                     fmt(s.get("reward_before_median")), "", ""])
        rows.append([f"{MODEL_NAMES[m]} ({m}/summary.json)", fmt(s.get("reward_after_mean")),
                     fmt(s.get("reward_after_median")), _gain(s.get("reward_gain")), fmt(s.get("kl"))])
    if not rows:
        return []
    return ["Reward-model score of T=1 samples on held-out prompts, as measured by the tuned stage itself "
            "(its starting model and the tuned model, the same prompts and seeds):", "",
            *_table(["model", "RM score mean", "RM score median", "change (95% CI)", "KL to the start"], rows), ""]


def before_after_section(run: RunFiles, comparison: dict) -> list[str]:
    models = _models(comparison)
    if not models:
        own = _summary_before_after(run)
        return ["## Before and after", "",
                *(own or ["n/a: no model comparison (no finished model, no held-out chat prompts, or "
                          "report.eval_prompts=0), and no before/after in the PPO or DPO summaries.", ""])]
    n = len(comparison["prompts"])
    lines = [
        "## Before and after", "",
        f"Every model answered the same {n} held-out prompts (from `{comparison['source']}`), each once "
        "greedily and once sampled at T=1 with the same seed; each answer was scored by the run's reward model "
        "and by the gold scorer. *finished* is the share of answers that ended with the end-of-turn token.", "",
        "### T=1 samples", "", *_overall_table(comparison, "sampled"), "",
        "### Greedy answers", "", *_overall_table(comparison, "greedy"), "",
    ]
    if "sft" in models:
        rows = [[f"{MODEL_NAMES[m]} − SFT", _gain(_paired(comparison, m, "sft", "rm")),
                 _gain(_paired(comparison, m, "sft", "gold"))] for m in models if m != "sft"]
        lines += ["### Change against SFT, paired over the same prompts (T=1 samples)", "",
                  *_table(["models", "RM score", "gold score"], rows), ""]
    lines += ["### Per task type (T=1 samples, mean)", "", *_grouped_table(comparison, "task"), "",
              "### Per language (T=1 samples, mean)", "", *_grouped_table(comparison, "lang"), ""]
    return lines


def lost_points_section(comparison: dict) -> list[str]:
    """Where each model's answers lose gold points: behaviour (format, style, safety), which a
    policy can learn once for all prompts, against correctness, which needs knowledge of the
    particular character or sum asked about."""
    lost = {(m, d): lost_points(comparison, m, d) for m in _models(comparison) for d in ("greedy", "sampled")}
    lost = {k: v for k, v in lost.items() if v is not None}
    if not lost:
        return []
    knowledge = sorted({p for v in lost.values() for p in v if p not in BEHAVIOUR_PARTS})
    behaviour = {k: sum(parts.get(p, 0.0) for p in BEHAVIOUR_PARTS) for k, parts in lost.items()}
    rows = []
    for (m, decoding), parts in lost.items():
        gold = score_stats(comparison, m, decoding)["gold"]["mean"]
        rows.append([MODEL_NAMES[m], "greedy" if decoding == "greedy" else "T=1", fmt(gold),
                     *[fmt(parts.get(p, 0.0)) for p in BEHAVIOUR_PARTS], fmt(behaviour[m, decoding]),
                     *[fmt(parts.get(p, 0.0)) for p in knowledge]])
    lines = [
        "## Where the answers lose gold points", "",
        "What the answers of the comparison above lost, per prompt on average, so that each row's parts add up "
        "to 1 − its gold score. *format*: unfinished, garbled or wrong-language answers; *style*: too long or "
        "repetitive; *safety*: a harmful request not refused or a harmless one refused, and the courtesy or "
        "help after it. These three are behaviour a policy can learn once for every prompt. *correctness* is "
        "what the answer states about the world: the right fact about a character, the right sum; on held-out "
        "prompts (characters and questions no training stage asked about) it needs knowledge from pretraining "
        "that rankings of the model's own answers can sharpen but hardly add.", "",
        *_table(["model", "decoding", "gold", *BEHAVIOUR_PARTS, "behaviour, all", *knowledge], rows), "",
    ]
    if ("sft", "greedy") in lost:
        sft = behaviour["sft", "greedy"]
        lines += [f"SFT's greedy answers lose {fmt(sft)} to behaviour and "
                  f"{fmt(sum(lost['sft', 'greedy'].values()) - sft)} to correctness: a policy that fixed every "
                  f"behaviour and stated nothing more correctly would gain {fmt(sft, '+.3f')} on its greedy "
                  "answers.", ""]
    return lines


def _example_indices(comparison: dict, k: int) -> list[int]:
    """The first prompt of each (task, language) pair, English first, so that the first ones shown
    cover every task type; at most k."""
    first: dict[tuple[str, str], int] = {}
    for i, p in enumerate(comparison["prompts"]):
        first.setdefault((p["task"], p["lang"]), i)
    pairs = sorted(first, key=lambda pair: (pair[1] != "en", pair[1], pair[0]))
    return [first[pair] for pair in pairs][:k]


def samples_section(comparison: dict, k: int) -> list[str]:
    models = _models(comparison)
    if not models or k <= 0:
        return []
    lines = ["## Sample conversations", "",
             "The same held-out prompts answered by each model (greedy), with each answer's gold and RM score.", ""]
    for n, i in enumerate(_example_indices(comparison, k), 1):
        p = comparison["prompts"][i]
        lines.append(f"### {n}. {p['task']} ({p['lang']})")
        lines.append("")
        for m in p["messages"]:
            lines.append(f"> **{m['role']}:** {_cell(m['content'], 600)}  ")
        lines.append("")
        rows = []
        for m in models:
            r = comparison["models"][m]["greedy"][i]
            answer = _cell(r["answer"]) + ("" if r["finished"] else " *(cut off)*")
            rows.append([MODEL_NAMES[m], answer, fmt(r["gold"], ".2f"), fmt(r["rm"], ".2f")])
        lines += [*_table(["model", "answer", "gold", "RM"], rows), ""]
    return lines


def headline_section(run: RunFiles, comparison: dict) -> list[str]:
    lines = ["## Headline", ""]
    walls = [stage_figures(run, s)["wall_s"] for s in run.summaries]
    if walls:
        total = fmt_duration(sum(w for w in walls if w is not None))
        lines.append(f"- The run's {_plural(len(walls), 'stage')} took {total} of wall-clock as they ran.")
    models = _models(comparison)
    if models:
        n = len(comparison["prompts"])
        for score, name in (("gold", "Gold score"), ("rm", "Reward-model score")):
            parts = [f"{MODEL_NAMES[m]} {fmt(score_stats(comparison, m, 'sampled')[score]['mean'])}" for m in models]
            lines.append(f"- {name} of T=1 answers to {n} held-out prompts (mean): " + ", ".join(parts) + ".")
        for m in ("ppo", "rounds", "dpo"):
            if m in models and "sft" in models:
                lines.append(f"- {MODEL_NAMES[m]} against SFT on the same prompts: gold "
                             f"{_gain(_paired(comparison, m, 'sft', 'gold'))}, "
                             f"RM {_gain(_paired(comparison, m, 'sft', 'rm'))}.")
    for m in ("ppo", "dpo"):
        s = run.summary(m)
        if not models and "reward_after_mean" in s:
            lines.append(f"- {MODEL_NAMES[m]}: reward-model score of T=1 samples on held-out prompts "
                         f"({m}/summary.json), mean {fmt(s.get('reward_before_mean'))} → "
                         f"{fmt(s.get('reward_after_mean'))}, median "
                         f"{fmt(s.get('reward_before_median'))} → {fmt(s.get('reward_after_median'))} "
                         f"({s.get('baseline', 'start')} → {MODEL_NAMES[m]}).")
    for m in ("ppo", "dpo"):
        s = run.summary(m)
        gain, gold = s.get("gold_gain_sampled"), s.get("gold") if isinstance(s.get("gold"), dict) else {}
        if gain and "n_samples" in gold:  # more answers than the comparison's one per prompt: a narrower CI
            lines.append(f"- {MODEL_NAMES[m]}'s own evaluation ({m}/summary.json, {gold['n_prompts']} held-out prompts "
                         f"× {gold['n_samples']} T=1 samples): gold {fmt(s.get('gold_score_sft_sampled'))} "
                         f"({MODEL_NAMES.get(s.get('baseline', 'sft'), s.get('baseline'))}) → "
                         f"{fmt(s.get('gold_score_sampled'))}, {_gain(gain)}.")
    for m in ("ppo", "dpo"):
        kl = run.summary(m).get("kl")
        if kl is not None:
            base = run.summary(m).get("baseline", "sft")
            lines.append(f"- {MODEL_NAMES[m]} KL to its starting model ({MODEL_NAMES.get(base, base)}) on held-out "
                         f"prompts ({m}/summary.json): {fmt(kl)} nats.")
    rm = run.summary("rm")
    if "pair_accuracy" in rm:
        lines.append(f"- Reward model held-out pair accuracy (rm/summary.json): {fmt(rm['pair_accuracy'])} against the "
                     f"labels, {fmt(rm.get('gold_pair_accuracy'))} against the gold scorer.")
    if "best_of_4_gold_gain" in rm:
        lines.append(f"- What the reward model can buy: its favourite of 4 SFT answers to a held-out prompt scores "
                     f"{fmt(rm['best_of_4_gold_gain'], '+.3f')} gold over a random one, the gold scorer's own pick "
                     f"{fmt(rm['best_of_4_oracle_gain'], '+.3f')} (rm/summary.json), at a KL of 0.64 nats from SFT "
                     "(the best-of-n section compares it with the RL models and with a lower temperature).")
    if rm.get("members"):
        lines.append(ensemble_line(rm))
    return lines + [""]


def ensemble_line(rm: dict) -> str:
    """Each ensemble member's held-out figures beside the ensemble's (rm/summary.json)."""
    how = rm["ensemble"]["combine"].replace("_", " ")
    if rm["ensemble"]["combine"] == "mean_minus_std":
        how = f"mean − {rm['ensemble']['std_coef']:g} × std"

    def figures(s: dict) -> str:
        return (f"best-of-4 {fmt(s.get('best_of_4_gold_gain'), '+.3f')}, "
                f"gold-order agreement {fmt(s.get('gold_pair_accuracy'))}")

    members = "; ".join(f"seed {m['seed']}: {figures(m)}" for m in rm["members"])
    return (f"- The reward model is an ensemble of {len(rm['members'])} (rm.ensemble, scores combined as {how}): "
            f"{members}; the ensemble: {figures(rm)}.")


def best_of_n_section(run: RunFiles, comparison: dict) -> list[str]:
    """The best-of-n table and the sentence that reads it (see picochat.report.best_of_n)."""
    per_prompt = comparison.get("best_of_n")
    if not per_prompt:
        return []
    curves = best_of_n_curves(per_prompt)
    points = rl_points(run.summaries)
    sharpening = sharpening_points(per_prompt, comparison.get("sharpened"))
    rows = []
    for i, n in enumerate(curves["n"]):
        rows.append([str(n), f"{curves['kl'][i]:.2f}",
                     *[_gain(curves[pick][i]) if pick in curves else NA for pick in PICKS]])
    for p in [*points, *sharpening]:
        rows.append([p["name"], f"{p['kl']:.2f}", _gain(p["gain"]), ""])
    return [
        "## Best of n: what the reward model is worth, and how much of it RL used", "",
        f"The SFT model answered {curves['prompts']} held-out prompts {curves['samples']} times (T=1). "
        "Picking the best of n answers moves the policy by KL = log n − (n−1)/n from the SFT model; the "
        "table gives the gold gain over a random answer of the reward model's pick and of the gold "
        "scorer's (an oracle: what a perfect reward buys at that KL), with 95% intervals over prompts, "
        "the RL models' gold gain of their T=1 samples at their KL to SFT, and the SFT model sampled at a "
        "lower temperature (4 answers per prompt), which sharpens it with no training at all.", "",
        *_table(["n (or model)", "KL", "gain: " + PICKS["rm"], "gain: " + PICKS["gold"]], rows),
        "", reading(curves, points, sharpening), "",
    ]


def rounds_section(run: RunFiles) -> list[str]:
    """Iterated RLHF: each round's labels, reward model and PPO figures (rounds/summary.json)."""
    rounds = run.summary("rounds").get("rounds")
    if not rounds:
        return []
    rows = []
    for r in rounds:
        ci = r.get("gold_gain_sampled_ci95") or [None, None]
        rows.append([str(r["round"]), fmt(r.get("labeled_prompts"), ","), fmt(r.get("label_gold_agreement")),
                     fmt(r.get("rm_gold_pair_accuracy")), fmt(r.get("rm_best_of_4_gold_gain"), "+.3f"),
                     f"{fmt(r.get('gold_gain_sampled'), '+.3f')} ({fmt(ci[0], '+.3f')}…{fmt(ci[1], '+.3f')})",
                     fmt(r.get("gold_gain_greedy"), "+.3f"), fmt(r.get("kl"), ".2f")])
    return [
        "## RLHF rounds", "",
        "Round 1 is the label, rm and ppo stages; each later round ranked the previous policy's answers, "
        "retrained the reward model on every ranking so far and ran PPO again (rounds/round_<r>/). Gains are "
        "each round's PPO against the SFT model on its held-out prompts (T=1 samples, paired 95% CI, and "
        "greedy); KL is to the SFT model.", "",
        *_table(["round", "labeled prompts", "labels vs gold", "RM vs gold order", "RM best-of-4",
                 "PPO gold gain, T=1 (CI)", "greedy", "KL"], rows), "",
    ]


def benchmark_section(cards: dict | None) -> list[str]:
    """The stage x task card: each model's main metric per task with its 95% interval, per form."""
    if cards is None:
        return []
    lines = ["## Benchmark card", ""]
    if not cards["cards"]:
        return lines + [f"n/a: {cards['note']}", ""]
    first_form = next(iter(next(iter(cards["cards"].values()))["results"].values()))
    lines += [
        f"Standard benchmarks scored as lm-evaluation-harness scores them (`picochat eval`; first "
        f"{next(iter(first_form.values()))['n']} items of each set). "
        "*loglik*: the most likely choice after the harness's prompt; *chat*: the question in the chat "
        "template, the answer read from the reply. Each cell is the task's usual metric with its 95% interval; "
        "CORE is the mean centred score, (score − chance) / (1 − chance): 0 is chance, 1 perfect. "
        "Models this small are expected near chance: the card is here to show the same measurement on "
        "a real run.", "",
    ]
    for form in ("loglik", "chat"):
        stages = [s for s, card in cards["cards"].items() if form in card["results"]]
        if not stages:
            continue
        tasks = list(cards["cards"][stages[0]]["results"][form])
        chance_row = ["chance", *[f"{cards['cards'][stages[0]]['results'][form][t]['chance']:.3f}" for t in tasks],
                      "0"]
        rows = []
        for stage in stages:
            by_task = cards["cards"][stage]["results"][form]
            cells = [f"{by_task[t]['score']:.3f} ±{(by_task[t]['ci95'][1] - by_task[t]['ci95'][0]) / 2:.3f}"
                     for t in tasks]
            rows.append([MODEL_NAMES.get(stage, stage), *cells, f"{cards['cards'][stage]['core'][form]:+.3f}"])
        metrics = [cards["cards"][stages[0]]["results"][form][t]["metric"] for t in tasks]
        lines += [f"**{form}**", "", *_table(["model", *[f"{t} ({m})" for t, m in zip(tasks, metrics)], "CORE"],
                                            [*rows, chance_row]), ""]
    return lines


def render_report(run: RunFiles, comparison: dict, plots: list[tuple[str, str]], preset: str | None,
                  n_examples: int, planned: list[str], plots_note: str = "", cards: dict | None = None) -> str:
    lines = [
        f"# picochat run report: `{run.out}`", "",
        f"Preset `{preset or NA}`. Written by `picochat report --out {run.out}` from the files of this run: "
        "each stage's `summary.json` and `metrics.jsonl`, and the model comparison in `report/compare.json`.", "",
        *headline_section(run, comparison),
        HOW_TO_READ, "",
        *stages_section(run, planned),
        "## Curves", "",
    ]
    for name, caption in plots:
        lines += [f"![{caption}](plots/{name})", "", f"*{caption}*", ""]
    if not plots:
        lines += [plots_note or "n/a: no metrics to plot.", ""]
    lines += before_after_section(run, comparison)
    lines += lost_points_section(comparison)
    lines += best_of_n_section(run, comparison)
    lines += rounds_section(run)
    lines += benchmark_section(cards)
    lines += samples_section(comparison, n_examples)
    return "\n".join(lines).rstrip() + "\n"
