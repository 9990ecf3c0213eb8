"""Best-of-n curves (Gao et al. 2022, fig. 1): what picking the best of n SFT samples buys, by the
reward model's pick and by the gold scorer's (an oracle's), against KL_bon = log n − (n−1)/n,
the KL from the SFT model of the best-of-n policy. RL's points (PPO, DPO: KL to SFT and gold gain
of their T=1 samples) go on the same axes.

Read together they say where RLHF's ceiling is:
- the oracle's curve is what any RL at that KL could reach with a perfect reward;
- the reward model's curve is what its own preferences are worth at that KL;
- an RL point under the reward model's curve has not used all of its reward model.

The SFT model answers each of the first `report.best_of_n_prompts` held-out prompts
`report.best_of_n` times (N) at T=1. For each n ≤ N the expected gold score of the pick is exact
over all n-subsets of the N samples (no resampling noise), and the gain is against the mean of
all N; the CI is over prompts.
"""

from __future__ import annotations

import math
import statistics

from picochat.eval.gold_eval import paired_difference

PICKS = {"rm": "the reward model's pick", "gold": "the gold scorer's pick (oracle)"}


def kl_best_of_n(n: int) -> float:
    """KL(best-of-n ‖ base) = log n − (n − 1)/n (Stiennon et al. 2020, appendix)."""
    return math.log(n) - (n - 1) / n


def expected_pick_score(proxy: list[float], target: list[float], n: int) -> float:
    """The expected `target` score of the sample with the highest `proxy` score among n drawn
    without replacement from the N: with samples ranked by proxy (ascending, ties by position),
    the one of rank r (0-based) is the pick of C(r, n−1) of the C(N, n) subsets."""
    N = len(proxy)
    if not 1 <= n <= N:
        raise ValueError(f"n must be in 1..{N}, got {n}")
    ranked = sorted(range(N), key=lambda i: (proxy[i], -i))  # equal proxy scores: the earlier sample wins
    return sum(target[ranked[r]] * math.comb(r, n - 1) for r in range(n - 1, N)) / math.comb(N, n)


def best_of_n_curves(per_prompt: list[dict], ns: list[int] | None = None) -> dict:
    """per_prompt: [{"gold": [N scores], "rm": [N scores] or None}] -> {"n", "kl", "<pick>": [gain
    dicts (mean, ci95, n) per n]} with the gains in gold score over a random sample."""
    N = min(len(p["gold"]) for p in per_prompt)
    ns = ns or [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= N]
    base = [statistics.fmean(p["gold"][:N]) for p in per_prompt]
    curves = {"n": ns, "kl": [kl_best_of_n(n) for n in ns], "samples": N, "prompts": len(per_prompt)}
    for pick in PICKS:
        if any(p.get(pick) is None for p in per_prompt):
            continue
        curves[pick] = [_exact_zero(paired_difference(
            [expected_pick_score(p[pick][:N], p["gold"][:N], n) for p in per_prompt], base)) for n in ns]
    return curves


def _exact_zero(gain: dict) -> dict:
    """Float noise (n=1 is the mean itself: a gain of 1e-17) shown as the 0 it is."""
    clean = lambda x: 0.0 if abs(x) < 1e-12 else x  # noqa: E731
    return {**gain, "mean": clean(gain["mean"]), "ci95": [clean(x) for x in gain["ci95"]]}


def interpolate(xs: list[float], ys: list[float], x: float) -> float | None:
    """y at x, linear between the points (xs ascending); None outside [xs[0], xs[-1]]."""
    for x0, y0, x1, y1 in zip(xs, ys, xs[1:], ys[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return None


def gain_at_kl(curves: dict, pick: str, kl: float) -> float | None:
    """The pick's gold gain at this KL, linear between the measured n (None past the largest)."""
    xs, ys = curves["kl"], [g["mean"] for g in curves.get(pick, [])]
    if not ys or kl > xs[-1]:
        return None
    return ys[0] if kl <= xs[0] else interpolate(xs, ys, kl)


def sharpening_points(per_prompt: list[dict], sharpened: list[dict] | None) -> list[dict]:
    """(name, KL to SFT, gold gain with CI) of the SFT model at lower temperatures (no training),
    against the same base as the curves: the mean of the prompt's T=1 samples."""
    if not sharpened:
        return []
    N = min(len(p["gold"]) for p in per_prompt)
    base = [statistics.fmean(p["gold"][:N]) for p in per_prompt]
    return [{"name": f"SFT at T={s['temperature']} (no training)", "temperature": s["temperature"], "kl": s["kl"],
             "kl_stderr": s.get("kl_stderr", 0.0), "gain": paired_difference(s["gold"], base)} for s in sharpened]


def sharpening_gain_at_kl(points: list[dict], kl: float) -> float | None:
    """What lowering the temperature gains at this KL: linear from (0, 0) through the points. A KL
    past the lowest temperature's by less than that KL's standard error reads that point: the two
    are equal as far as the measurement can tell (None further out)."""
    if points and points[-1]["kl"] < kl <= points[-1]["kl"] + points[-1].get("kl_stderr", 0.0):
        return points[-1]["gain"]["mean"]
    return interpolate([0.0, *[p["kl"] for p in points]], [0.0, *[p["gain"]["mean"] for p in points]], kl)


def rl_points(summaries: dict) -> list[dict]:
    """(name, KL to SFT, gold gain of T=1 samples with CI) of each RL stage that has them."""
    points = []
    for stage, name in (("ppo", "PPO"), ("dpo", "DPO")):
        s = summaries.get(stage) or {}
        gain = s.get("gold_gain_sampled")
        if gain and s.get("kl") is not None:
            label = f"{name} (reward={s['reward']})" if s.get("reward") not in (None, "rm") else name
            points.append({"name": label, "kl": float(s["kl"]), "gain": gain})
    return points


def reading(curves: dict, points: list[dict], sharpening: list[dict] | None = None) -> str:
    """The sentences that read the figure for the user."""
    parts = []
    for p in points:
        rm = gain_at_kl(curves, "rm", p["kl"])
        oracle = gain_at_kl(curves, "gold", p["kl"])
        sharp = sharpening_gain_at_kl(sharpening or [], p["kl"])
        gain = p["gain"]["mean"]
        against = []
        if rm is None and oracle is None:
            against.append(f"past the KL of best-of-{curves['n'][-1]} ({curves['kl'][-1]:.2f})")
        if rm is not None and rm > 0:
            against.append(f"{100 * gain / rm:.0f}% of its reward model's best-of-n gain at equal KL ({rm:+.3f})")
        if oracle is not None and oracle > 0:
            against.append(f"{100 * gain / oracle:.0f}% of the oracle's ({oracle:+.3f})")
        if sharp is not None:
            against.append(f"{'more' if gain > sharp else 'no more'} than lowering the SFT model's temperature "
                           f"to the same KL buys ({sharp:+.3f})")
        elif sharpening and p["kl"] > sharpening[-1]["kl"]:
            # Past the lowest temperature's KL there is no reading at equal KL, but a temperature
            # that gains as much at a lower KL is the better trade, and one that gains less is not.
            best = max(sharpening, key=lambda t: t["gain"]["mean"])
            t_gain = best["gain"]["mean"]
            against.append(f"{'more' if gain > t_gain else 'no more'} than the SFT model sampled at "
                           f"T={best['temperature']} gains with no training, at a lower KL ({t_gain:+.3f} at KL "
                           f"{best['kl']:.2f})")
        parts.append(f"{p['name']} gained {gain:+.3f} at KL {p['kl']:.2f}: " + (", ".join(against) or "n/a"))
    if "rm" in curves and "gold" in curves:
        n, rm, oracle = curves["n"][-1], curves["rm"][-1]["mean"], curves["gold"][-1]["mean"]
        share = f"{100 * rm / oracle:.0f}%" if oracle > 0 else "n/a"
        parts.append(f"the reward model's best-of-{n} reached {share} of the oracle's "
                     f"({rm:+.3f} against {oracle:+.3f})")
    text = "; ".join(parts) + "." if parts else ""
    if sharpening:
        t = sharpening[0]
        text += (f" With no training at all, sampling the SFT model at T={t['temperature']} gains "
                 f"{t['gain']['mean']:+.3f} at KL {t['kl']:.2f}: RL that gains less than that at its KL has mostly "
                 "sharpened the SFT model's distribution rather than learned what the reward wants.")
    text = text.strip()
    return text[:1].upper() + text[1:]
