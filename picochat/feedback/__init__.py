"""Human feedback: rankings of K answers per prompt (InstructGPT step 2), here from the built-in
simulated annotator (`autolabel`)."""

from picochat.feedback.autolabel import (
    gold_ranking,
    label_prompts,
    noisy_ranking,
    pair_agreement,
    summarize_labels,
    world_label_prompts,
)

__all__ = ["noisy_ranking", "gold_ranking", "pair_agreement", "summarize_labels",
           "label_prompts", "world_label_prompts"]
