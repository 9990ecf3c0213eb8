"""The rounds stage: iterated RLHF (`rlhf.rounds=N`). Round 1 is the label, rm and ppo stages; each
later round r, in `<out>/rounds/round_<r>/`:

1. label/  the built-in labeler ranks K answers of the current policy (round r−1's) to
           `rlhf.prompts` train prompts, a fresh shuffle of the world's each round; or, with
           `rlhf.labeler=people`, people rank them on the labeling page of `picochat serve`
           (into <out>/human_labels/round_<r>.jsonl, outside the stage, so that redoing the
           stage never deletes them) and the round waits until `rlhf.prompts` are ranked;
2. rm/     a reward model (or ensemble) trained from rm.init on every ranking so far: round 1's,
           which are the SFT model's answers, then each later round's;
3. ppo/    PPO against it, from the previous policy (`rlhf.policy_start=last`) or from the SFT
           model (`sft`), with the KL penalty always to the SFT model.

Each step writes summary.json when it is complete, and a killed stage resumes at the first step
without one (a killed training step from its checkpoint; a killed labeling from its last
labeled prompt). Round r depends on the rounds before it and not on `rlhf.rounds`, which is left
out of the stage's fingerprint: raising it runs on from the rounds already finished. Under torchrun
the rounds run in rank 0.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path

from picochat.config import RunConfig
from picochat.core.io import atomic_write_json, atomic_write_text
from picochat.core.precision import default_device, resolve_precision
from picochat.data.preferences import read_preferences
from picochat.feedback.autolabel import label_prompts, world_label_prompts
from picochat.layout import human_labels_file, load_model_and_tokenizer, policy_of_round, round_dir, world_file
from picochat.stages.ppo import train_policy
from picochat.stages.rm import train_reward_model
from picochat.train.ppo import PPOTrainer
from picochat.world import GoldScorer, read_world

PREFERENCES = "preferences.jsonl"


def run(cfg: RunConfig, out: Path, show_progress: bool = True) -> dict:
    out = Path(out)
    t0 = time.perf_counter()
    rounds = [_round_one(out)]
    for r in range(2, cfg.rlhf.rounds + 1):
        print(f"[rounds] round {r} of {cfg.rlhf.rounds}: label the policy's answers, retrain the reward model, "
              f"PPO from {'the previous policy' if cfg.rlhf.policy_start == 'last' else 'the SFT model'}")
        rounds.append(_run_round(cfg, out, r, show_progress))
    last = rounds[-1]
    return {"stage": "rounds", "rounds": rounds, "policy": str(policy_of_round(out, cfg.rlhf.rounds)),
            **{k: last[k] for k in ("gold_gain_sampled", "gold_gain_greedy", "kl") if k in last},
            "wall_s": time.perf_counter() - t0}


def _round_one(out: Path) -> dict:
    """Round 1's figures, from the label, rm and ppo stages' summaries."""
    return {"round": 1, **_round_figures(*(json.loads((out / s / "summary.json").read_text())
                                            for s in ("label", "rm", "ppo")))}


def _run_round(cfg: RunConfig, out: Path, r: int, show_progress: bool) -> dict:
    d = round_dir(out, r)
    label = _step(d / "label", lambda: _label(cfg, out, r, d / "label", show_progress))
    later_labels = tuple(round_dir(out, j) / "label" / PREFERENCES for j in range(2, r + 1))
    rm = _step(d / "rm", lambda: train_reward_model(cfg, out, d / "rm", show_progress, later_labels))
    start = policy_of_round(out, r - 1) if cfg.rlhf.policy_start == "last" else None
    ppo_cfg = copy.deepcopy(cfg)
    ppo_cfg.ppo.reward_model = str(d / "rm")
    ppo_cfg.ppo.train.seed += r - 1  # other rollouts than the round before's
    ppo = _step(d / "ppo", lambda: train_policy(
        ppo_cfg, out, PPOTrainer(ppo_cfg, out, show_progress, stage_dir=d / "ppo", start=start), show_progress))
    figures = {"round": r, **_round_figures(label, rm, ppo)}
    f = {k: "n/a" if v is None else f"{v:+.3f}" for k, v in figures.items() if not isinstance(v, list)}
    print(f"[rounds] round {r}: reward model best-of-4 {f['rm_best_of_4_gold_gain']}; PPO gold gain "
          f"{f['gold_gain_sampled']} (T=1), {f['gold_gain_greedy']} (greedy), KL to SFT {f['kl'].lstrip('+')}")
    return figures


def _step(step_dir: Path, work: Callable[[], dict]) -> dict:
    """A round's step: its summary when it completed before (a killed stage does not redo it), else
    run it and write the summary last."""
    done = step_dir / "summary.json"
    if done.exists():
        print(f"[rounds] {step_dir} already complete, reusing it")
        return json.loads(done.read_text())
    summary = work()
    atomic_write_json(done, summary)
    return summary


def _label(cfg: RunConfig, out: Path, r: int, label_dir: Path, show_progress: bool) -> dict:
    if cfg.rlhf.labeler == "people":
        return _people_labels(cfg, out, r, label_dir)
    lcfg = cfg.label
    device = default_device()
    model, tokenizer, _ = load_model_and_tokenizer(policy_of_round(out, r - 1), device)
    scorer = GoldScorer(read_world(world_file(out))[0])
    prompts = world_label_prompts(out / "world", "train", cfg.rlhf.prompts, lcfg.seed + r - 1, task_mix=lcfg.task_mix)
    print(f"[rounds] ranking {lcfg.k} answers of round {r - 1}'s policy to each of {len(prompts)} train prompts")
    return label_prompts(model, tokenizer, scorer, prompts, label_dir / PREFERENCES, lcfg,
                         resolve_precision("auto", device), show_progress=show_progress)


def _people_labels(cfg: RunConfig, out: Path, r: int, label_dir: Path) -> dict:
    """The first rlhf.prompts rankings people gave on the labeling page, copied into the round; a
    clear stop saying what to do while there are fewer."""
    source = human_labels_file(out, r)
    records, problems = read_preferences(source, skip_invalid=True) if source.exists() else ([], [])
    ranked = [record for record in records if record.ranking is not None]
    need = cfg.rlhf.prompts
    if len(ranked) < need:
        raise RuntimeError(
            f"round {r} waits for people: {len(ranked)} of {need} prompts ranked in {source}. Rank answers of "
            f"round {r - 1}'s policy on the labeling page: `picochat serve --ckpt {policy_of_round(out, r - 1)} "
            f"--label-out {source}`, open http://127.0.0.1:8000/label, then run `picochat rounds --out {out}` "
            "again (or set rlhf.labeler=auto for the built-in labeler)")
    lines = [json.dumps(record.to_json(), ensure_ascii=False) for record in ranked[:need]]
    atomic_write_text(label_dir / PREFERENCES, "\n".join(lines) + "\n")
    print(f"[rounds] round {r}: {need} prompts ranked by people in {source}"
          + (f" ({len(problems)} invalid lines skipped)" if problems else ""))
    return {"stage": "label", "labeler": "people", "source": str(source), "n_prompts": need,
            "n_invalid_records": len(problems)}


def _round_figures(label: dict, rm: dict, ppo: dict) -> dict:
    """What the report's rounds table shows of one round."""
    gain = lambda d: (d or {}).get("mean")  # noqa: E731
    return {
        "labeled_prompts": label.get("n_prompts"),
        "label_gold_agreement": label.get("pair_agreement_with_gold"),
        "rm_gold_pair_accuracy": rm.get("gold_pair_accuracy"),
        "rm_best_of_4_gold_gain": rm.get("best_of_4_gold_gain"),
        "gold_score_sampled": ppo.get("gold_score_sampled"),
        "gold_gain_sampled": gain(ppo.get("gold_gain_sampled")),
        "gold_gain_sampled_ci95": (ppo.get("gold_gain_sampled") or {}).get("ci95"),
        "gold_gain_greedy": gain(ppo.get("gold_gain_greedy")),
        "kl": ppo.get("kl"),
        "rm_score_before": ppo.get("reward_before_mean"),
        "rm_score_after": ppo.get("reward_after_mean"),
    }

