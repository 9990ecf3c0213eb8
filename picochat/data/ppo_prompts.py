"""The prompts PPO optimises on, and the held-out ones it is evaluated on.

- No `ppo.prompts`: the built-in world's training prompts (its test prompts are the held-out set,
  scored by the gold scorer in `evaluate_policy`).
- `ppo.format=chat` with files: JSON lines of preference records (their prompt), chat
  conversations (everything before the last assistant turn) or `{"prompt": ...}` lines.
- `ppo.format=text` with files: any text corpus (text/JSONL/Parquet, field `ppo.prompt_field`);
  a prompt is the first `ppo.prompt_tokens` tokens of a document.

Prompts that leave no room for `ppo.max_new_tokens` (or are longer than `ppo.max_prompt_tokens`)
are skipped. From files, `ppo.eval_prompts` prompts (at most a quarter of them) are held out by a
hash of the prompt, so the same ones are held out on every run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from picochat.config import PPOConfig
from picochat.core.chat import ChatFormatError
from picochat.core.prompt import Prompt, encode_prompt
from picochat.core.tokenizer import Tokenizer
from picochat.data.chat_data import conversation_from_record, find_chat_files
from picochat.data.preferences import PreferenceError, _prompt, parse_record
from picochat.data.readers import CorpusError, iter_corpus, iter_json_lines
from picochat.data.sources import resolve_sources
from picochat.world import read_chat_examples

PREFERENCE_KEYS = ("chosen", "rejected", "responses", "ranking", "label")


@dataclass
class PromptSets:
    train: list[Prompt]
    held_out: list[Prompt] = field(default_factory=list)  # empty for the world: it has its own test split
    n_too_long: int = 0
    problems: list[str] = field(default_factory=list)  # records skipped as invalid ("file, line N: why")


def _chat_prompt(obj, file: Path, lineno: int) -> list[dict]:
    where = f"{file}, line {lineno}"
    if not isinstance(obj, dict):
        raise CorpusError(file, f"expected a JSON object, got {type(obj).__name__}", lineno)
    if any(k in obj for k in PREFERENCE_KEYS):
        record = parse_record(obj, where)
        if record.prompt is None:
            raise PreferenceError(where, "a raw-text record has no prompt; use ppo.format=text for text openings")
        return record.prompt
    if set(obj) <= {"prompt", "meta", "id", "task", "lang"} and "prompt" in obj:
        return _prompt(obj["prompt"], where)
    messages = conversation_from_record(obj, file, lineno)
    last_assistant = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return _prompt(messages[:last_assistant], where, "the conversation before its last assistant turn")


def read_chat_prompts(files: list[Path]) -> tuple[list[list[dict]], list[str]]:
    """(the prompts of chat/preference JSONL files, each distinct prompt once, in file order;
    the records skipped as invalid). Public data has a few malformed records (HH-RLHF has dialogues
    whose last two turns are both the assistant's); a file without one valid record is an error."""
    pool: dict[str, list[dict]] = {}
    problems: list[str] = []
    for path in files:
        for file in find_chat_files(path):
            n_valid = 0
            for lineno, obj in iter_json_lines(file):
                try:
                    prompt = _chat_prompt(obj, file, lineno)
                except (CorpusError, ChatFormatError) as e:
                    problems.append(str(e))
                    continue
                n_valid += 1
                pool.setdefault(json.dumps(prompt, ensure_ascii=False, sort_keys=True), prompt)
            if n_valid == 0:
                raise CorpusError(file, f"no record with a usable prompt; the first problem: "
                                  f"{problems[-1] if problems else 'the file is empty'}")
    return list(pool.values()), problems


def read_text_openings(files: list[Path], text_field: str, tokenizer: Tokenizer, n_tokens: int) -> list[str]:
    """The first `n_tokens` tokens of every document (decoded back to text), each distinct one
    once. Documents shorter than that are skipped: there would be nothing of theirs to continue."""
    openings: dict[str, None] = {}
    for doc in iter_corpus(files, text_field):
        ids = tokenizer.encode(doc[: 32 * n_tokens])  # tokens are rarely over 32 characters
        if len(ids) > n_tokens:
            openings.setdefault(tokenizer.decode(ids[:n_tokens]), None)
    return list(openings)


def _hash(prompt: Prompt) -> int:
    blob = json.dumps(prompt, ensure_ascii=False, sort_keys=True).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little")


def split_held_out(prompts: list[Prompt], n_eval: int) -> tuple[list[Prompt], list[Prompt]]:
    """(train, held out): the `n_eval` prompts (at most a quarter) with the smallest hashes are held out."""
    n_eval = min(n_eval, len(prompts) // 4)
    held = set(sorted(range(len(prompts)), key=lambda i: _hash(prompts[i]))[:n_eval])
    return [p for i, p in enumerate(prompts) if i not in held], [p for i, p in enumerate(prompts) if i in held]


def load_ppo_prompts(pcfg: PPOConfig, out: Path, tokenizer: Tokenizer, max_seq_len: int) -> PromptSets:
    problems: list[str] = []
    if not pcfg.prompts:
        pool: dict[str, list[dict]] = {}
        for e in read_chat_examples(out / "world" / "chat_train.jsonl"):
            pool.setdefault(repr(e.prompt()), e.prompt())
        prompts: list[Prompt] = list(pool.values())
    else:
        files = resolve_sources(pcfg.prompts, "ppo.prompts")
        if pcfg.format == "text":
            prompts = read_text_openings(files, pcfg.prompt_field, tokenizer, pcfg.prompt_tokens)
        else:
            prompts, problems = read_chat_prompts(files)
    room = max_seq_len - pcfg.max_new_tokens
    limit = min(pcfg.max_prompt_tokens or room, room)
    fitting = [p for p in prompts if len(encode_prompt(tokenizer, p)) <= limit]
    if not fitting:
        raise ValueError(f"no PPO prompts of at most {limit} tokens in {', '.join(pcfg.prompts) or 'the world'} "
                         f"({len(prompts)} read); lower ppo.max_new_tokens or use a model with a longer max_seq_len")
    if not pcfg.prompts:
        return PromptSets(fitting, [], len(prompts) - len(fitting))
    train, held_out = split_held_out(fitting, pcfg.eval_prompts)
    return PromptSets(train, held_out, len(prompts) - len(fitting), problems)
