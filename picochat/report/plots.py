"""The report's curves, drawn from the run's metrics.jsonl files and its model comparison.

Figures are built with `matplotlib.figure.Figure` and saved by the Agg canvas: no pyplot, no
display, no global state. Each plot is skipped when the run has no data for it. Without matplotlib
installed there are no plots (the report says how to get them) and the tables are still written.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from picochat.report.best_of_n import PICKS, best_of_n_curves, rl_points, sharpening_points
from picochat.report.collect import RunFiles
from picochat.report.compare import MODEL_NAMES, score_stats


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _figure(n_panels: int):
    # Imported here, not at the top: matplotlib is optional (the `report` extra), and a run without
    # it still writes the report's tables.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * n_panels, 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, n_panels, i + 1) for i in range(n_panels)]


def _panel(ax, run: RunFiles, stage: str, keys: list[tuple[str, str]], title: str, x: str = "step") -> bool:
    drawn = False
    for key, label in keys:
        xs, ys = run.series(stage, key, x)
        if xs:
            ax.plot(xs, ys, marker="o" if len(xs) < 15 else None, markersize=3, label=label)
            drawn = True
    ax.set_title(title)
    ax.set_xlabel("iteration" if x == "iteration" else "step")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    return drawn


def plot_losses(run: RunFiles, path: Path) -> bool:
    fig, (a, b) = _figure(2)
    drawn = _panel(a, run, "pretrain", [("loss", "train loss"), ("val_loss", "held-out loss")], "pretraining: loss")
    drawn |= _panel(b, run, "sft", [("loss", "train loss"), ("val_loss", "held-out loss")],
                    "SFT: loss on assistant tokens")
    return drawn and _save(fig, path)


def plot_reward_model(run: RunFiles, path: Path) -> bool:
    fig, (a, b) = _figure(2)
    drawn = _panel(a, run, "rm", [("loss", "train loss")], "reward model: pairwise loss")
    drawn |= _panel(b, run, "rm", [("val_pair_accuracy", "agrees with the labels"),
                                   ("val_gold_pair_accuracy", "agrees with the gold scorer")],
                    "reward model: held-out pair accuracy")
    return drawn and _save(fig, path)


def plot_ppo(run: RunFiles, path: Path) -> bool:
    fig, (a, b, c) = _figure(3)
    drawn = _panel(a, run, "ppo", [("rm_score", "reward-model score")], "PPO: RM score of rollouts", x="iteration")
    drawn |= _panel(b, run, "ppo", [("gold_score", "gold score")], "PPO: gold score of rollouts", x="iteration")
    drawn |= _panel(c, run, "ppo", [("kl", "KL(policy || SFT)")], "PPO: KL to the SFT model", x="iteration")
    return drawn and _save(fig, path)


def plot_dpo(run: RunFiles, path: Path) -> bool:
    fig, (a, b) = _figure(2)
    drawn = _panel(a, run, "dpo", [("loss", "train loss"), ("val_loss", "held-out loss")], "DPO: loss")
    drawn |= _panel(b, run, "dpo", [("val_reward_accuracy", "agrees with the labels"),
                                    ("val_gold_reward_accuracy", "agrees with the gold scorer")],
                    "DPO: held-out implicit-reward accuracy")
    return drawn and _save(fig, path)


def plot_before_after(comparison: dict, path: Path) -> bool:
    """Mean gold and RM score of each model's T=1 samples on the shared held-out prompts."""
    models = [m for m in MODEL_NAMES if m in comparison.get("models", {})]
    if not models:
        return False
    fig, axes = _figure(2)
    drawn = False
    for ax, score, title in ((axes[0], "gold", "gold score (T=1 samples)"),
                             (axes[1], "rm", "reward-model score (T=1 samples)")):
        means = [score_stats(comparison, m, "sampled")[score]["mean"] for m in models]
        shown = [(MODEL_NAMES[m], v) for m, v in zip(models, means) if v is not None]
        if shown:
            colour = "tab:blue" if score == "gold" else "tab:orange"
            bars = ax.bar([n for n, _ in shown], [v for _, v in shown], color=colour)
            ax.bar_label(bars, fmt="%.3f", fontsize=8)
            drawn = True
        ax.set_title(title)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.grid(axis="y", alpha=0.3)
    return drawn and _save(fig, path)


def plot_best_of_n(run: RunFiles, comparison: dict, path: Path) -> bool:
    """Gold gain against KL from SFT: best-of-n by the reward model and by the gold scorer, and
    the RL models' points (Gao et al. 2022, fig. 1)."""
    per_prompt = comparison.get("best_of_n")
    if not per_prompt:
        return False
    curves = best_of_n_curves(per_prompt)
    fig, (ax,) = _figure(1)
    for pick, colour in (("rm", "tab:orange"), ("gold", "tab:blue")):
        if pick in curves:
            means = [g["mean"] for g in curves[pick]]
            lows = [g["ci95"][0] for g in curves[pick]]
            highs = [g["ci95"][1] for g in curves[pick]]
            ax.plot(curves["kl"], means, marker="o", markersize=3, color=colour, label=f"best of n: {PICKS[pick]}")
            ax.fill_between(curves["kl"], lows, highs, color=colour, alpha=0.15)
            for kl, m, n in zip(curves["kl"], means, curves["n"]):
                ax.annotate(f"n={n}", (kl, m), fontsize=6, xytext=(2, 2), textcoords="offset points")
    for point, marker in zip(rl_points(run.summaries), ("s", "D", "^")):
        g = point["gain"]
        ax.errorbar([point["kl"]], [g["mean"]], yerr=[[g["mean"] - g["ci95"][0]], [g["ci95"][1] - g["mean"]]],
                    fmt=marker, color="black", markersize=5, capsize=3, label=point["name"])
    sharpening = sharpening_points(per_prompt, comparison.get("sharpened"))
    if sharpening:
        temperatures = ", ".join(["1", *(f"{p['temperature']:g}" for p in sharpening)])
        ax.plot([0.0, *[p["kl"] for p in sharpening]], [0.0, *[p["gain"]["mean"] for p in sharpening]],
                linestyle="--", marker="x", color="tab:gray", label=f"SFT at T = {temperatures} (no training)")
    ax.set_xlabel("KL from the SFT model (nats)")
    ax.set_ylabel("gold gain over a random SFT answer")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path: Path) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)  # atomic: a half-written png never replaces a good one
    return True


PLOTS = (  # file name, caption, function
    ("losses.png", "Pretraining and SFT loss: train (every log step) and held-out (every eval).", plot_losses),
    ("reward_model.png",
     "Reward model: training loss and held-out pair accuracy against the labels and the gold scorer.",
     plot_reward_model),
    ("ppo.png",
     "PPO over iterations: reward-model score and gold score of each rollout batch, and its KL to the SFT model.",
     plot_ppo),
    ("dpo.png", "DPO: loss and held-out accuracy of its implicit reward.", plot_dpo),
)


def write_plots(run: RunFiles, comparison: dict, plots_dir: Path) -> list[tuple[str, str]]:
    """Draw every plot the run has data for; returns (file name, caption) of those written."""
    written = []
    for name, caption, draw in PLOTS:
        if draw(run, plots_dir / name):
            written.append((name, caption))
    if plot_before_after(comparison, plots_dir / "before_after.png"):
        written.append(("before_after.png",
                        "Before/after: mean scores of each model's answers to the same held-out prompts."))
    if plot_best_of_n(run, comparison, plots_dir / "best_of_n.png"):
        written.append(("best_of_n.png", "Best of n SFT answers by the reward model and by the gold scorer, "
                        "against KL from SFT, with the RL models' points."))
    return written
