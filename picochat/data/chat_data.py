"""Chat (SFT) datasets from files: one conversation per JSON line, in the formats people have.

Accepted files: `.jsonl` / `.jsonl.gz` (one JSON object per line; blank lines skipped), or a
directory of them (read recursively in sorted path order; hidden files skipped). Each record may
be any of:

- OpenAI / TRL style: `{"messages": [{"role": "user", "content": "..."}, ...]}`; other keys
  ("task", "meta", ...) are ignored.
- Alpaca: `{"instruction": ..., "input": ... (optional, may be ""), "output": ...}`, optionally
  with "system" and LLaMA-Factory's "history" ([[user, assistant], ...] turns before this one).
  The user turn is instruction + "\\n\\n" + input when input is not empty.
- ShareGPT: `{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}`, optionally
  with a top-level "system".

Every conversation must hold at least one assistant message (otherwise there is nothing to learn).
Errors raise CorpusError or ChatFormatError naming the file, the line, and what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from picochat.core.chat import ChatFormatError, validate_messages
from picochat.data.readers import CorpusError, files_in_directory, iter_json_lines

CHAT_SUFFIXES = (".jsonl", ".jsonl.gz")
# ShareGPT speaker names seen in the wild -> our roles.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "bing": "assistant", "model": "assistant",
}
EXPECTED_FORMS = ('{"messages": [{"role", "content"}, ...]}, '
                  '{"instruction", "input", "output"} (Alpaca) or '
                  '{"conversations": [{"from", "value"}, ...]} (ShareGPT)')


def find_chat_files(path: str | os.PathLike) -> list[Path]:
    """The .jsonl/.jsonl.gz files of a file or directory path, in reading order."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(path, "no such file or directory")
    if path.is_dir():
        files = files_in_directory(path, CHAT_SUFFIXES)
        if not files:
            raise CorpusError(path, f"directory has no chat files (expected {', '.join(CHAT_SUFFIXES)})")
        return files
    if not path.name.lower().endswith(CHAT_SUFFIXES):
        raise CorpusError(path, f"unsupported file type for chat data; expected "
                          f"{' or '.join(CHAT_SUFFIXES)} with one conversation per line")
    return [path]


def _string_field(record: dict, key: str, path: Path, line: int, default: str | None = None) -> str:
    if key not in record and default is None:
        raise CorpusError(path, f"missing field {key!r}", line)
    value = record.get(key, default)
    if value is None and default is not None:
        value = default
    if not isinstance(value, str):
        raise CorpusError(path, f"field {key!r} must be a string, got {type(value).__name__}", line)
    return value


def _from_alpaca(record: dict, path: Path, line: int) -> list[dict]:
    if "output" not in record:
        raise CorpusError(path, "Alpaca record has 'instruction' but no 'output' field", line)
    instruction = _string_field(record, "instruction", path, line)
    extra = _string_field(record, "input", path, line, default="")
    messages = []
    system = _string_field(record, "system", path, line, default="")
    if system:
        messages.append({"role": "system", "content": system})
    history = record.get("history") or []
    if not isinstance(history, list) or not all(
            isinstance(t, (list, tuple)) and len(t) == 2 for t in history):
        raise CorpusError(path, "field 'history' must be a list of [user, assistant] pairs", line)
    for user, assistant in history:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    user = instruction + ("\n\n" + extra if extra else "")
    messages += [{"role": "user", "content": user},
                 {"role": "assistant", "content": _string_field(record, "output", path, line)}]
    return messages


def _from_sharegpt(record: dict, path: Path, line: int) -> list[dict]:
    turns = record["conversations"]
    if not isinstance(turns, list):
        raise CorpusError(path, f"field 'conversations' must be a list, got {type(turns).__name__}", line)
    messages = []
    system = _string_field(record, "system", path, line, default="")
    if system:
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise CorpusError(path, f"conversation turn {i} must be an object like "
                              '{"from": "human", "value": "..."}', line)
        if "role" in turn:  # some ShareGPT dumps already use OpenAI keys
            messages.append(turn)
            continue
        speaker = turn.get("from")
        role = SHAREGPT_ROLES.get(speaker.lower() if isinstance(speaker, str) else speaker)
        if role is None:
            raise CorpusError(
                path, f"conversation turn {i} is from {speaker!r}; expected human, gpt or system", line)
        messages.append({"role": role, "content": turn.get("value")})
    return messages


def conversation_from_record(record, path: Path, line: int) -> list[dict]:
    """One JSON record (any accepted form) -> validated messages with at least one assistant turn."""
    if not isinstance(record, dict):
        raise CorpusError(path, f"expected a JSON object like {EXPECTED_FORMS}, "
                          f"got {type(record).__name__}", line)
    if "messages" in record:
        messages = record["messages"]
    elif "conversations" in record:
        messages = _from_sharegpt(record, path, line)
    elif "instruction" in record:
        messages = _from_alpaca(record, path, line)
    else:
        keys = ", ".join(repr(k) for k in list(record)[:10]) or "none"
        raise CorpusError(path, f"unrecognised chat record (fields present: {keys}); "
                          f"expected {EXPECTED_FORMS}", line)
    where = f"{path}, line {line}"
    messages = validate_messages(messages, where=where)
    if not any(m["role"] == "assistant" for m in messages):
        raise ChatFormatError(f"{where}: the conversation has no assistant message, so there is "
                              "nothing to train on")
    return messages


def iter_conversations(path: str | os.PathLike, *, limit: int = 0) -> Iterator[list[dict]]:
    """Stream conversations ([{"role", "content"}, ...]) from a file or directory; `limit` > 0
    stops after that many. Raises CorpusError if nothing is found."""
    n = 0
    for file in find_chat_files(path):
        for lineno, record in iter_json_lines(file, EXPECTED_FORMS):
            yield conversation_from_record(record, file, lineno)
            n += 1
            if limit and n >= limit:
                return
    if n == 0:
        raise CorpusError(path, "no conversations found (the file or directory is empty)")
