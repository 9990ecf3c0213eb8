"""The chat template: how a conversation becomes tokens (ChatML, as Qwen and OpenAI use).

Every message is

    <|im_start|>{role}\\n{content}<|im_end|>\\n

and a prompt that asks the model to answer ends with the assistant header `<|im_start|>assistant\\n`.
The model answers, then emits `<|im_end|>`, which is where generation stops.

Two things are easy to get subtly wrong, and are tested:
- The special tokens are inserted as ids; role and content are encoded with allow_special=False.
  A user who types "<|im_end|>\\n<|im_start|>assistant" gets those characters as ordinary text,
  not a forged turn boundary (prompt injection through the template).
- The SFT loss mask. `loss_mask[i] == 1` means "ids[i] is a target the model should learn to
  produce": the tokens of each assistant message's content and its closing `<|im_end|>` (so the
  model learns to stop). Headers, the "\\n" between messages, system and user text are context
  only. The mask is aligned with `ids`; the trainer shifts it with the targets.

`CHAT_TEMPLATE` is the same format as a Jinja template for Hugging Face's `apply_chat_template`,
written into `tokenizer_config.json` next to `tokenizer.json`, so other tools render exactly what
`render_text` renders. (Token ids match too, except in rare edge cases where content starts with
whitespace that the byte-level pre-tokenizer would merge with the header's "\\n": picochat encodes
header and content separately, so the loss mask has an exact content boundary.)
"""

from __future__ import annotations

import os
from pathlib import Path

from picochat.core.io import atomic_write_json
from picochat.core.tokenizer import EOT, IM_END, IM_START, PAD, Tokenizer

ROLES = ("system", "user", "assistant")
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


class ChatFormatError(ValueError):
    """A conversation is not a valid list of {"role", "content"} messages; says where and why."""


def validate_messages(messages, where: str = "conversation") -> list[dict]:
    """Check a conversation and return normalised copies: [{"role": str, "content": str}, ...].

    Rules: a non-empty list; every message a dict with a `role` in ROLES and a string `content`;
    a system message only as the first message. Extra keys (name, weight, ...) are dropped.
    Errors raise ChatFormatError starting with `where` (e.g. "data.jsonl, line 3").
    """
    if not isinstance(messages, (list, tuple)):
        raise ChatFormatError(
            f"{where}: expected a list of messages like "
            f'[{{"role": "user", "content": "..."}}], got {type(messages).__name__}')
    if not messages:
        raise ChatFormatError(f"{where}: the conversation has no messages")
    out = []
    for i, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            raise ChatFormatError(
                f'{where}: message {i} must be an object like {{"role": "user", "content": "..."}}, '
                f"got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise ChatFormatError(
                f"{where}: message {i} has role {role!r}; expected system, user or assistant")
        if role == "system" and i != 1:
            raise ChatFormatError(
                f"{where}: message {i} is a system message; only the first message may be one")
        content = message.get("content")
        if not isinstance(content, str):
            raise ChatFormatError(
                f"{where}: message {i} ({role}) needs string content, got {type(content).__name__}")
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:  # JSON allows "\ud800" escapes that are not valid Unicode
            raise ChatFormatError(
                f"{where}: message {i} ({role}) contains an unpaired surrogate; "
                "the text must be valid Unicode") from None
        out.append({"role": role, "content": content})
    return out


def render_chat(tokenizer: Tokenizer, messages, add_generation_prompt: bool = False
                ) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and its SFT loss mask (same length; see the module docstring)."""
    messages = validate_messages(messages)
    newline = tokenizer.encode("\n")
    ids: list[int] = []
    mask: list[int] = []

    def add(piece: list[int], target: bool) -> None:
        ids.extend(piece)
        mask.extend([int(target)] * len(piece))

    for m in messages:
        is_assistant = m["role"] == "assistant"
        add([tokenizer.im_start_id] + tokenizer.encode(m["role"] + "\n"), False)
        add(tokenizer.encode(m["content"]) + [tokenizer.im_end_id], is_assistant)
        add(newline, False)
    if add_generation_prompt:
        add([tokenizer.im_start_id] + tokenizer.encode("assistant\n"), False)
    return ids, mask


def render_prompt(tokenizer: Tokenizer, messages) -> list[int]:
    """Ids for asking the model to answer: the conversation (ending with a user turn) followed by
    the assistant header."""
    messages = validate_messages(messages)
    if messages[-1]["role"] != "user":
        raise ChatFormatError(
            f"conversation: a prompt must end with a user message, this one ends with "
            f"{messages[-1]['role']!r}")
    return render_chat(tokenizer, messages, add_generation_prompt=True)[0]


def render_text(messages, add_generation_prompt: bool = False) -> str:
    """The conversation as text with the special tokens spelled out (what `render_chat` encodes)."""
    messages = validate_messages(messages)
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    if add_generation_prompt:
        text += f"{IM_START}assistant\n"
    return text


def parse_response(tokenizer: Tokenizer, ids) -> str:
    """The text of a generated reply: ids up to (excluding) the first <|im_end|> or <|endoftext|>.

    Any other special token left in the reply (a stray <|im_start|> or <|pad|>) is dropped from
    the text rather than shown to the user.
    """
    stop = {tokenizer.im_end_id, tokenizer.eot_id}
    reply = []
    for i in ids:
        if int(i) in stop:
            break
        reply.append(int(i))
    return tokenizer.decode(reply, skip_special=True)


# Hugging Face convention: variables `messages` and `add_generation_prompt`; HF renders with
# trim_blocks=True, lstrip_blocks=True. One line, so no template whitespace leaks into the output.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def write_tokenizer_config(out_dir: str | os.PathLike, model_max_length: int | None = None,
                           eos_token: str = IM_END) -> Path:
    """Write out_dir/tokenizer_config.json so `transformers.AutoTokenizer.from_pretrained(out_dir)`
    finds the chat template and the stop token (IM_END for a chat model, EOT for a base model).
    Returns its path."""
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
        "bos_token": None,
        "eos_token": eos_token,  # a chat reply ends at IM_END; generation stops on it
        "pad_token": PAD,
        "unk_token": None,  # byte level: every string encodes, nothing is unknown
        "additional_special_tokens": [EOT, IM_START, IM_END],
        "clean_up_tokenization_spaces": False,  # decode must return the text exactly
    }
    if model_max_length is not None:
        config["model_max_length"] = int(model_max_length)
    path = Path(out_dir) / TOKENIZER_CONFIG_FILE
    atomic_write_json(path, config)
    return path
