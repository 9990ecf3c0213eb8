"""The SFT model at a lower sampling temperature: what sharpening alone buys, with no training.

RL on a small model mostly moves probability towards the answers the model already likes best;
dividing the logits by a temperature τ < 1 does the same with no reward at all. Its gold gain and
its KL from the T=1 model, measured on the same held-out prompts as the best-of-n curves, are the
line RL has to beat to have learned more than a temperature. Tempered(model, τ) is the model whose
distribution is `model`'s at temperature τ, so sampling it at T=1 and taking its KL to `model`
uses the same code as for a trained policy.
"""

from __future__ import annotations

import statistics

import torch

from picochat.core.generate import SamplingConfig
from picochat.core.tokenizer import Tokenizer
from picochat.eval.gold_eval import answer_prompts
from picochat.eval.kl import sampled_kl

# down to 0.4 (KL ≈ 2.5 from the tiny SFT model): the tiny preset's PPO ends near KL 2, past T=0.5's
SHARPENING_TEMPERATURES = (0.7, 0.5, 0.4)


class Tempered(torch.nn.Module):
    """`model` with its logits divided by `temperature`: its distribution at that temperature."""

    def __init__(self, model: torch.nn.Module, temperature: float):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.model, self.temperature, self.cfg = model, temperature, model.cfg

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.model(*args, **kwargs) / self.temperature


def sharpened_gold(model, tokenizer: Tokenizer, prompts: list[list[dict]], gold, *, precision: str,
                   max_new_tokens: int, n_samples: int, seed: int,
                   temperatures: tuple[float, ...] = SHARPENING_TEMPERATURES) -> list[dict]:
    """For each temperature: the mean gold score of `n_samples` answers per prompt ("gold", one
    value per prompt) and the KL from `model` at T=1 per response ("kl", "kl_stderr")."""
    results = []
    for temperature in temperatures:
        sharp = Tempered(model, temperature)
        messages = [p for p in prompts for _ in range(n_samples)]
        answers = answer_prompts(sharp, tokenizer, messages, SamplingConfig(max_new_tokens=max_new_tokens,
                                                                            temperature=1.0, seed=seed),
                                 precision, desc=f"SFT at T={temperature}")
        scores = [gold.score(m, text, finished=finished) for m, (text, finished) in zip(messages, answers)]
        kl = sampled_kl(sharp, model, tokenizer, prompts, precision, n_samples=n_samples,
                        max_new_tokens=max_new_tokens, seed=seed)
        results.append({"temperature": temperature, "kl": kl["mean"], "kl_stderr": kl["stderr"],
                        "gold": [statistics.fmean(scores[i * n_samples:(i + 1) * n_samples])
                                 for i in range(len(prompts))]})
    return results
