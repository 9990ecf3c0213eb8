"""What a policy is asked to continue: a chat conversation or a plain-text opening.

RLHF on a chat model (`ppo.format=chat`) hands it a conversation ending with a user turn, rendered
with the chat template; its answer ends with `<|im_end|>`. RLHF on a plain language model
(`ppo.format=text`, the classic "make movie-review continuations positive" demonstration) hands it
the opening words of a document, after `<|endoftext|>` as every document starts in pretraining;
its continuation ends when it samples `<|endoftext|>` or reaches the length limit. A prompt is a
list of messages in the first case and a string in the second, so rollouts, reward scoring and the
KL estimate tell them apart by type.
"""

from __future__ import annotations

from picochat.core.chat import render_prompt
from picochat.core.tokenizer import Tokenizer

Prompt = list[dict] | str


def is_text_prompt(prompt: Prompt) -> bool:
    return isinstance(prompt, str)


def encode_prompt(tokenizer: Tokenizer, prompt: Prompt) -> list[int]:
    """Token ids the policy continues: `<|endoftext|>` + text, or the chat template's prompt."""
    if is_text_prompt(prompt):
        return [tokenizer.eot_id] + tokenizer.encode(prompt)
    return render_prompt(tokenizer, prompt)


def end_token_id(tokenizer: Tokenizer, prompt: Prompt) -> int:
    """The token that ends a response to this prompt (it is part of the response the policy learns)."""
    return tokenizer.eot_id if is_text_prompt(prompt) else tokenizer.im_end_id


def stop_token_ids(tokenizer: Tokenizer, prompt: Prompt) -> tuple[int, ...]:
    """Tokens that stop sampling: a chat answer also stops at `<|endoftext|>` (mapped to its end)."""
    return (tokenizer.eot_id,) if is_text_prompt(prompt) else (tokenizer.im_end_id, tokenizer.eot_id)


def reward_input(prompt: Prompt, response: str) -> tuple[list[dict] | None, str]:
    """(prompt, response) as a reward model reads them: a text prompt's reward model scores the
    whole text, opening and continuation together (prompt None = raw text)."""
    return (None, prompt + response) if is_text_prompt(prompt) else (prompt, response)
