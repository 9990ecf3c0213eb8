"""Rollouts for RLHF: sample responses from the policy and lay them out for scoring and training.

A rollout batch is a (B, P + R) tensor: each prompt left-padded to width P, each response
right-padded to width R, so response token j of every row sits in column P + j and the logits
that predict it are in column P + j − 1. The response includes `<|im_end|>` when the model ended
its answer (the policy must learn to stop) and is truncated there; a response that never ended
is marked unfinished so the reward can penalise it. A plain-text prompt (a string, see
`picochat.core.prompt`) is continued as a document instead, and `<|endoftext|>` ends it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from picochat.core.generate import SamplingConfig, generate
from picochat.core.model import GPT
from picochat.core.precision import autocast
from picochat.core.prompt import Prompt, encode_prompt, end_token_id, stop_token_ids
from picochat.core.tokenizer import Tokenizer


@dataclass
class Rollout:
    prompts: list[Prompt]  # chat prompts (message lists) or text openings (strings)
    texts: list[str]  # decoded responses (without the end token)
    finished: torch.Tensor  # (B,) bool: the response ended with its end token
    input_ids: torch.Tensor  # (B, P + R)
    attention_mask: torch.Tensor  # (B, P + R) 1 = real token
    response_mask: torch.Tensor  # (B, R) 1 = response token (including the end token)
    prompt_width: int  # P

    @property
    def response_ids(self) -> torch.Tensor:  # (B, R)
        return self.input_ids[:, self.prompt_width :]



def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under the softmax of logits, in fp32: logits (B, T, V), tokens (B, T) -> (B, T).

    The logits at position t must already be the prediction for tokens[:, t] (shift before calling).
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    return log_probs.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)

def layout(prompt_ids: list[list[int]], response_ids: list[list[int]],
           pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(input_ids, attention_mask, response_mask, P): prompts left-padded, responses right-padded."""
    P = max(len(p) for p in prompt_ids)
    R = max(1, max(len(r) for r in response_ids))
    B = len(prompt_ids)
    ids = torch.full((B, P + R), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + R), dtype=torch.long)
    resp_mask = torch.zeros((B, R), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        ids[i, P - len(p) : P] = torch.tensor(p, dtype=torch.long)
        attn[i, P - len(p) : P] = 1
        if r:
            ids[i, P : P + len(r)] = torch.tensor(r, dtype=torch.long)
            attn[i, P : P + len(r)] = 1
            resp_mask[i, : len(r)] = 1
    return ids, attn, resp_mask, P


@torch.no_grad()
def sample_rollout(policy: GPT, tokenizer: Tokenizer, prompts: list[Prompt], max_new_tokens: int,
                   temperature: float, seed: int, precision: str) -> Rollout:
    device = next(policy.parameters()).device
    prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]
    end_id = end_token_id(tokenizer, prompts[0])
    room = policy.cfg.max_seq_len - max(len(p) for p in prompt_ids)
    if room < 1:
        raise ValueError("a PPO prompt leaves no room for a response within the model's max_seq_len")
    sampling = SamplingConfig(max_new_tokens=min(max_new_tokens, room), temperature=temperature, seed=seed,
                              stop_ids=stop_token_ids(tokenizer, prompts[0]))
    policy.eval()
    with autocast(precision, device):
        results = generate(policy, prompt_ids, sampling, pad_id=tokenizer.pad_id)
    finished = [r.finish_reason == "stop" for r in results]
    # The end token is part of the response the policy is trained on; in a chat, <|endoftext|> is
    # mapped to <|im_end|> (either ends the turn; the chat format's end is <|im_end|>).
    response_ids = [r.tokens + ([end_id] if f else []) for r, f in zip(results, finished)]
    ids, attn, resp_mask, P = layout(prompt_ids, response_ids, tokenizer.pad_id)
    return Rollout(prompts, [tokenizer.decode(r.tokens) for r in results], torch.tensor(finished), ids, attn,
                   resp_mask, P)


def response_logits(model: torch.nn.Module, ids: torch.Tensor, attn: torch.Tensor, P: int) -> torch.Tensor:
    """Outputs at the columns that predict the response tokens: (B, R, V) for an LM, (B, R) for a
    scalar head (the value of the state before each response token)."""
    out = model(ids, attention_mask=attn)  # positions come from the mask (left padding)
    return out[:, P - 1 : -1]


def response_logprobs(model: torch.nn.Module, rollout_ids: torch.Tensor, attn: torch.Tensor, P: int,
                      temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs of the sampled response tokens (B, R), logits (B, R, V)) at the sampling
    temperature: the same distribution the rollout was drawn from."""
    logits = response_logits(model, rollout_ids, attn, P).float()
    if temperature > 0:
        logits = logits / temperature
    return logprobs_from_logits(logits, rollout_ids[:, P:]), logits
