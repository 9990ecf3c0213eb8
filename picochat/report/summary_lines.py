"""One line per stage saying what it achieved, from its summary.json: printed when the stage
finishes (or is reused) and shown in the report's table of stages."""

from __future__ import annotations

from collections.abc import Callable


def sft_line(s: dict) -> str:
    line = f"val loss {s.get('val_loss', float('nan')):.3f}"
    if "gold_score" in s:
        line += (f", gold score greedy {s['gold_score']:.3f} / sampled {s['gold_score_sampled']:.3f} "
                 f"(pretrained model: {s['gold_score_pretrained']:.3f})")
    return line


def rm_line(s: dict) -> str:
    if "scalar_accuracy" in s:  # scalar labels (e.g. sentiment): no pairs
        return (f"held-out label accuracy {s['scalar_accuracy']:.3f}, AUC {s.get('scalar_auc', float('nan')):.3f} "
                f"({s['n_scalar']} texts)")
    line = f"held-out pair accuracy {s.get('pair_accuracy', float('nan')):.3f}"
    if "gold_pair_accuracy" in s:
        line += (f", vs gold ordering {s['gold_pair_accuracy']:.3f} "
                 f"(labels agree with gold on {s['label_gold_agreement']:.3f})")
    if "best_of_4_gold_gain" in s:
        line += (f"; its best of 4 answers gains {s['best_of_4_gold_gain']:+.3f} gold over a random one "
                 f"(the gold scorer's pick {s['best_of_4_oracle_gain']:+.3f})")
    return line


def policy_line(s: dict) -> str:
    if "gold_score" not in s:
        line = f"{s.get('iterations', s.get('steps'))} steps"
        if "reward_after_mean" in s:
            line += (f", reward-model score of samples mean {s['reward_before_mean']:.3f} -> "
                     f"{s['reward_after_mean']:.3f}, "
                     f"median {s['reward_before_median']:.3f} -> {s['reward_after_median']:.3f} "
                     f"({s['baseline']} -> {s['stage']}), KL to {s['baseline']} {s['kl']:.2f}")
        return line
    g = s.get("gold_gain_sampled") or {}
    return (f"gold score greedy {s['gold_score']:.3f} / sampled {s['gold_score_sampled']:.3f} "
            f"(SFT {s['gold_score_sft']:.3f} / {s['gold_score_sft_sampled']:.3f}; sampled gain "
            f"{g.get('mean', float('nan')):+.3f}, "
            f"95% CI [{g.get('ci95', [0, 0])[0]:+.3f}, {g.get('ci95', [0, 0])[1]:+.3f}]), "
            f"KL to SFT {s['kl']:.2f}")


def world_line(s: dict) -> str:
    return f"{s['n_characters']} characters, {s['n_docs']:,} documents, {s['n_bytes'] / 1e6:.1f} MB"


def tokenizer_line(s: dict) -> str:
    return f"vocab {s['vocab_size']}, {s['bytes_per_token']:.2f} bytes/token"


def pretrain_line(s: dict) -> str:
    return (f"val loss {s['val_loss']:.3f}, ppl {s['val_ppl']:.2f}, bpb {s['val_bpb']:.3f}, "
            f"{s['tokens_per_s']:,.0f} tok/s ({s['precision']})")


def label_line(s: dict) -> str:
    return (f"{s['n_prompts']} prompts x {s['k']} answers, mean gold {s['mean_gold']:.3f}, "
            f"labels agree with gold on {s['pair_agreement_with_gold']:.3f} of pairs")


def rounds_line(s: dict) -> str:
    def gain(r: dict) -> str:
        g = r.get("gold_gain_sampled")
        return "n/a" if g is None else f"{g:+.3f}"

    return (f"{len(s['rounds'])} RLHF rounds, PPO's sampled gold gain over SFT by round: "
            + ", ".join(gain(r) for r in s["rounds"]) + f"; the last policy is {s['policy']}")


SUMMARY_LINES: dict[str, Callable[[dict], str]] = {
    "world": world_line, "tokenizer": tokenizer_line, "pretrain": pretrain_line, "sft": sft_line,
    "label": label_line, "rm": rm_line, "ppo": policy_line, "dpo": policy_line, "rounds": rounds_line,
}


def summary_line(stage: str, summary: dict) -> str:
    return SUMMARY_LINES[stage](summary)
