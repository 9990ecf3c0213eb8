"""Preference data: which responses to a prompt people (or a labeler) liked better.

Files are `.jsonl` / `.jsonl.gz` (one JSON object per line, blank lines skipped) or a directory of
them (read recursively in sorted path order; hidden files skipped). Each line is one prompt, in any
of these forms:

1. K-wise ranking -- what picochat's labelers write, and what every other form becomes:

       {"prompt": [{"role": "user", "content": "..."}],
        "responses": ["reply 0", "reply 1", "reply 2", "reply 3"],
        "ranking": [2, [0, 3], 1],
        "meta": {"labeler": "...", "time": "..."}}

   `prompt` is an OpenAI-style message list ending with a user message (a plain string is one user
   message). `responses` are the assistant replies as strings, K of them (2 <= K <= max_k, 9 by
   default). `ranking` lists the response indices (0-based) from best to worst; a list inside it
   is a group of tied responses. Every index appears exactly once. An optional `"all_bad": true`
   (the labeler found no response acceptable) is kept in `meta`, as is any other extra key.
   A ranking of K responses gives K(K-1)/2 (winner, loser) pairs minus the tied ones (`pairs()`):
   InstructGPT trains the reward model on all pairs of one prompt together.

2. Pairwise chosen/rejected -- Anthropic HH-RLHF, TRL, LLaMA-Factory. Becomes
   responses=[chosen, rejected], ranking=[[0], [1]].
   - TRL explicit prompt: `{"prompt": str | messages, "chosen": str | [assistant message],
     "rejected": ...}`.
   - TRL implicit prompt: `{"chosen": messages, "rejected": messages}`, two whole conversations;
     the prompt is their common prefix, each response is the final assistant message.
   - HH-RLHF text: `{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: hello", "rejected": ...}`; Human
     becomes user, Assistant becomes assistant; the response is the last Assistant turn and the
     prompt is everything before it. (A prompt string in this style is parsed the same way.)
   - LLaMA-Factory / MedicalGPT: `{"conversations": [{"from": "human", "value": ...}], "chosen":
     {"from": "gpt", "value": ...} | str, "rejected": ...}` (ShareGPT speakers).
   The two responses must answer the same prompt; if the dialogues differ before the last
   assistant turn the record is rejected.

3. Scalar labels (a score per response, for regression-style reward models or KTO):
   `{"text": str, "label": float}` (raw text, e.g. IMDB sentiment; no chat template, prompt None)
   or `{"messages": [... ending with an assistant message], "label": float}` (prompt =
   messages[:-1], response = the last assistant message). A JSON true/false label reads as 1.0/0.0
   (the LLaMA-Factory KTO files).

Problems raise `PreferenceError` (a `CorpusError`, so the CLI reports it like any bad data file)
naming the file, the line, what is wrong and what was expected.

Labelers append one record per line with `append_record` (one write() + fsync per line), so a
killed process leaves at most a torn last line; `repair_torn_tail` removes it before writing again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from picochat.core.chat import ChatFormatError, validate_messages
from picochat.core.io import atomic_write
from picochat.data.chat_data import _from_sharegpt
from picochat.data.readers import CorpusError, _open_binary, files_in_directory

PREFERENCE_SUFFIXES = (".jsonl", ".jsonl.gz")
DEFAULT_MAX_K = 9
EXPECTED_FORMS = ('{"prompt", "responses", "ranking"} (K-wise ranking), '
                  '{"prompt", "chosen", "rejected"} or {"chosen", "rejected"} (pairwise), '
                  '{"text", "label"} or {"messages", "label"} (scalar label)')
RANKING_KEYS = ("prompt", "responses", "ranking", "meta", "all_bad")
PAIRWISE_KEYS = ("prompt", "chosen", "rejected", "conversations", "system", "meta")
SCALAR_KEYS = ("text", "messages", "label", "meta")
HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


class PreferenceError(CorpusError):
    """A preference record or file is malformed. str(e) reads "FILE, line N: what; expected"."""

    def __init__(self, where: str | os.PathLike, message: str, line: int | None = None):
        super().__init__(where, message, line)


@dataclass
class PreferenceRecord:
    prompt: list[dict] | None          # chat messages ending with a user turn; None for raw text
    responses: list[str]
    ranking: list[list[int]] | None    # groups best -> worst, each a sorted list of tied indices
    label: float | None = None         # scalar records only
    meta: dict = field(default_factory=dict)  # everything else the record carried
    source: str = ""                   # "file, line N", for error messages downstream

    @property
    def kind(self) -> str:
        return "scalar" if self.ranking is None else "ranking"

    def pairs(self) -> list[tuple[int, int]]:
        """(winner, loser) index pairs: every two responses in different groups, best first.
        A scalar record has none."""
        if self.ranking is None:
            return []
        return [(w, l)
                for i, better in enumerate(self.ranking)
                for worse in self.ranking[i + 1:]
                for w in better for l in worse]

    def to_json(self) -> dict:
        """The K-wise (or scalar) JSON form; `parse_record(r.to_json(), ...)` gives `r` back."""
        if self.ranking is None:
            if self.prompt is None:
                obj = {"text": self.responses[0]}
            else:
                obj = {"messages": self.prompt + [{"role": "assistant",
                                                   "content": self.responses[0]}]}
            obj["label"] = self.label
        else:
            obj = {"prompt": self.prompt, "responses": list(self.responses),
                   "ranking": [g[0] if len(g) == 1 else list(g) for g in self.ranking]}
        if self.meta:
            obj["meta"] = dict(self.meta)
        return obj


def prompt_key(prompt: list[dict] | None) -> str:
    """A stable id of a prompt (sha1 of its canonical JSON), to de-duplicate or resume labeling."""
    if prompt is not None:
        prompt = [{"role": m["role"], "content": m["content"]} for m in prompt]
    canonical = json.dumps(prompt, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# One record


def _messages(value, where: str, what: str) -> list[dict]:
    try:
        return validate_messages(value, where=what)
    except ChatFormatError as e:
        raise PreferenceError(where, str(e)) from None


def _parse_hh(text: str, where: str, what: str) -> list[dict]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [{"role": "user", ...}, {"role": "assistant", ...}]."""
    parts = HH_TURN.split(text)  # [before, speaker, content, speaker, content, ...]
    if parts[0].strip() or len(parts) < 3:
        raise PreferenceError(where, f"{what} is not an HH-RLHF dialogue; expected text like "
                              '"\\n\\nHuman: ...\\n\\nAssistant: ..."')
    return [{"role": HH_ROLES[speaker], "content": content.strip()}
            for speaker, content in zip(parts[1::2], parts[2::2])]


def _is_hh(text) -> bool:
    return isinstance(text, str) and text.startswith("\n\nHuman:")


def _prompt(value, where: str, what: str = "field 'prompt'") -> list[dict]:
    if isinstance(value, str):
        if _is_hh(value):  # TRL's processed HH: "\n\nHuman: ...\n\nAssistant:" + " reply"
            messages = _parse_hh(value, where, what)
            if messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
                messages = messages[:-1]
        else:
            messages = [{"role": "user", "content": value}]
    else:
        messages = _messages(value, where, what)
    if not messages or messages[-1]["role"] != "user":
        ends = messages[-1]["role"] if messages else "nothing"
        raise PreferenceError(where, f"{what} ends with {ends}; a prompt must end with a user "
                              "message (the responses answer it)")
    if not any(m["content"].strip() for m in messages):
        raise PreferenceError(where, f"{what} is empty; expected the text the responses answer")
    return messages


def _response_text(value, where: str, what: str) -> str:
    """A response: a string, a one-message assistant list, or a ShareGPT/OpenAI message dict."""
    if isinstance(value, dict):
        if "from" in value and "role" not in value:  # ShareGPT {"from": "gpt", "value": ...}
            value = {"role": "assistant", "content": value.get("value")}
        value = [value]
    if isinstance(value, list):
        messages = _messages(value, where, what)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise PreferenceError(where, f"{what} must be one assistant message like "
                                  '[{"role": "assistant", "content": "..."}], '
                                  f"got {len(messages)} message(s)")
        return messages[0]["content"]
    if not isinstance(value, str):
        raise PreferenceError(where, f"{what} must be a string (the reply text), "
                              f"got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON allows "\ud800" escapes that are not valid Unicode
        raise PreferenceError(where, f"{what} contains an unpaired surrogate; "
                              "the text must be valid Unicode") from None
    return value


def _meta(obj: dict, known: tuple[str, ...], where: str) -> dict:
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise PreferenceError(where, f"field 'meta' must be an object, got {type(meta).__name__}")
    meta = dict(meta)
    for key, value in obj.items():  # extra keys (ids, scores, model names) travel in meta
        if key not in known:
            meta.setdefault(key, value)
    return meta


def _ranking(value, k: int, where: str) -> list[list[int]]:
    expected = (f"expected response indices 0..{k - 1} from best to worst, each exactly once, "
                "ties as a list, e.g. [2, [0, 3], 1]")
    if not isinstance(value, list) or not value:
        raise PreferenceError(where, f"field 'ranking' must be a non-empty list; {expected}")
    groups, seen = [], set()
    for item in value:
        group = item if isinstance(item, list) else [item]
        if not group:
            raise PreferenceError(where, f"field 'ranking' holds an empty tie group; {expected}")
        for i in group:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < k:
                raise PreferenceError(where, f"field 'ranking' holds {i!r}, which is not a "
                                      f"response index; {expected}")
            if i in seen:
                raise PreferenceError(where, f"field 'ranking' lists response {i} twice; "
                                      f"{expected}")
            seen.add(i)
        groups.append(sorted(group))
    missing = sorted(set(range(k)) - seen)
    if missing:
        raise PreferenceError(where, f"field 'ranking' leaves out response(s) "
                              f"{', '.join(map(str, missing))}; {expected}")
    return groups


def _parse_ranking(obj: dict, where: str, max_k: int) -> PreferenceRecord:
    if "prompt" not in obj:
        raise PreferenceError(where, "K-wise record has no 'prompt'; expected "
                              '{"prompt", "responses", "ranking"}')
    prompt = _prompt(obj["prompt"], where)
    responses = obj.get("responses")
    if not isinstance(responses, list):
        raise PreferenceError(where, "field 'responses' must be a list of reply strings, got "
                              f"{type(responses).__name__}")
    if not 2 <= len(responses) <= max_k:
        raise PreferenceError(where, f"field 'responses' holds {len(responses)} response(s); "
                              f"expected 2 to {max_k} to rank")
    responses = [_response_text(r, where, f"response {i}") for i, r in enumerate(responses)]
    ranking = _ranking(obj.get("ranking"), len(responses), where)
    meta = _meta(obj, RANKING_KEYS, where)
    if "all_bad" in obj:
        if not isinstance(obj["all_bad"], bool):
            raise PreferenceError(where, "field 'all_bad' must be true or false, got "
                                  f"{obj['all_bad']!r}")
        meta["all_bad"] = obj["all_bad"]
    return PreferenceRecord(prompt, responses, ranking, meta=meta, source=where)


def _split_dialogue(messages: list[dict], where: str, what: str) -> tuple[list[dict], str]:
    """A whole conversation -> (prompt, text of the final assistant message)."""
    if messages[-1]["role"] != "assistant":
        raise PreferenceError(where, f"{what} ends with a {messages[-1]['role']} message; "
                              "expected the conversation to end with the assistant's reply")
    return _prompt(messages[:-1], where, f"the conversation before the last reply in {what}"), \
        messages[-1]["content"]


def _parse_pairwise(obj: dict, where: str) -> PreferenceRecord:
    for key in ("chosen", "rejected"):
        if key not in obj:
            raise PreferenceError(where, f"pairwise record has no {key!r}; expected "
                                  '{"prompt", "chosen", "rejected"} or {"chosen", "rejected"}')
    chosen, rejected = obj["chosen"], obj["rejected"]
    if "prompt" in obj or "conversations" in obj:  # explicit prompt (TRL, LLaMA-Factory)
        if "prompt" in obj:
            prompt = _prompt(obj["prompt"], where)
        else:
            try:
                prompt = _prompt(_from_sharegpt(obj, where, None), where, "field 'conversations'")
            except CorpusError as e:
                raise PreferenceError(where, str(e).removeprefix(f"{where}: ")) from None
        responses = [_response_text(chosen, where, "field 'chosen'"),
                     _response_text(rejected, where, "field 'rejected'")]
    elif isinstance(chosen, list) and isinstance(rejected, list):  # TRL implicit prompt
        prompt, c = _split_dialogue(_messages(chosen, where, "field 'chosen'"), where,
                                    "field 'chosen'")
        prompt_r, r = _split_dialogue(_messages(rejected, where, "field 'rejected'"), where,
                                      "field 'rejected'")
        if prompt != prompt_r:
            raise PreferenceError(where, "'chosen' and 'rejected' differ before their last "
                                  "assistant message; expected two replies to the same prompt")
        responses = [c, r]
    elif _is_hh(chosen) and _is_hh(rejected):  # HH-RLHF plain text
        prompt, c = _split_dialogue(_parse_hh(chosen, where, "field 'chosen'"), where,
                                    "field 'chosen'")
        prompt_r, r = _split_dialogue(_parse_hh(rejected, where, "field 'rejected'"), where,
                                      "field 'rejected'")
        if prompt != prompt_r:
            raise PreferenceError(where, "the 'chosen' and 'rejected' dialogues differ before "
                                  "the last Assistant turn; expected two replies to the same "
                                  "conversation")
        responses = [c, r]
    else:
        raise PreferenceError(where, "pairwise record without 'prompt': expected 'chosen' and "
                              "'rejected' to be whole conversations (message lists) or HH-RLHF "
                              'text ("\\n\\nHuman: ...\\n\\nAssistant: ..."); or add a "prompt"')
    meta = _meta(obj, PAIRWISE_KEYS, where)
    return PreferenceRecord(prompt, responses, [[0], [1]], meta=meta, source=where)


def _parse_scalar(obj: dict, where: str) -> PreferenceRecord:
    label = obj["label"]
    if isinstance(label, bool):
        label = float(label)
    if not isinstance(label, (int, float)) or not math.isfinite(label):
        raise PreferenceError(where, f"field 'label' must be a finite number, got {label!r}")
    if "text" in obj:
        prompt = None
        response = _response_text(obj["text"], where, "field 'text'")
    elif "messages" in obj:
        prompt, response = _split_dialogue(_messages(obj["messages"], where, "field 'messages'"),
                                           where, "field 'messages'")
    else:
        raise PreferenceError(where, "scalar record has 'label' but neither 'text' nor "
                              "'messages'; expected {\"text\", \"label\"} or "
                              "{\"messages\", \"label\"}")
    return PreferenceRecord(prompt, [response], None, label=float(label),
                            meta=_meta(obj, SCALAR_KEYS, where), source=where)


def parse_record(obj: dict, where: str, max_k: int = DEFAULT_MAX_K) -> PreferenceRecord:
    """One JSON object in any accepted form (see the module docstring) -> a PreferenceRecord.
    `where` ("file, line N") starts every error message."""
    if not isinstance(obj, dict):
        raise PreferenceError(where, f"expected a JSON object like {EXPECTED_FORMS}, "
                              f"got {type(obj).__name__}")
    if "responses" in obj or "ranking" in obj:
        return _parse_ranking(obj, where, max_k)
    if "chosen" in obj or "rejected" in obj:
        return _parse_pairwise(obj, where)
    if "label" in obj:
        return _parse_scalar(obj, where)
    keys = ", ".join(repr(k) for k in list(obj)[:10]) or "none"
    raise PreferenceError(where, f"unrecognised preference record (fields present: {keys}); "
                          f"expected {EXPECTED_FORMS}")


# ---------------------------------------------------------------------------------------------
# Files


def find_preference_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The .jsonl/.jsonl.gz files of the given files and directories, in reading order."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise PreferenceError(path, "no such file or directory")
        if path.is_dir():
            found = files_in_directory(path, PREFERENCE_SUFFIXES)
            if not found:
                raise PreferenceError(path, "directory has no preference files (expected "
                                      f"{' or '.join(PREFERENCE_SUFFIXES)})")
            files.extend(found)
        elif not path.name.lower().endswith(PREFERENCE_SUFFIXES):
            raise PreferenceError(path, "unsupported file type for preference data; expected "
                                  f"{' or '.join(PREFERENCE_SUFFIXES)} with one record per line")
        else:
            files.append(path)
    if not files:
        raise PreferenceError("<no paths>", "no preference files given")
    return files


def _parse_line(raw: bytes, file: Path, lineno: int, max_k: int) -> PreferenceRecord | None:
    """One raw line -> a record, or None for a blank line."""
    try:
        line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as e:
        raise PreferenceError(file, f"invalid UTF-8 at byte {e.start} of the line; preference "
                              "files must be UTF-8 text", lineno) from None
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise PreferenceError(file, f"invalid JSON ({e.msg} at column {e.colno}); expected one "
                              "object per line", lineno) from None
    try:
        return parse_record(obj, f"{file}, line {lineno}", max_k)
    except PreferenceError as e:
        e.path, e.line = file, lineno  # the message already names both
        raise


def read_preferences(path_or_paths: str | os.PathLike | Iterable[str | os.PathLike], *,
                     max_k: int = DEFAULT_MAX_K, limit: int = 0, skip_invalid: bool = False
                     ) -> tuple[list[PreferenceRecord], list[str]]:
    """Read every record of the given files/directories -> (records, problems).

    With skip_invalid=False the first bad record raises PreferenceError; with True it is skipped
    and described in `problems` ("file, line N: ..."). Either way a file without a single valid
    record is an error. `limit` > 0 stops after that many records.
    """
    records: list[PreferenceRecord] = []
    problems: list[str] = []
    for file in find_preference_files(path_or_paths):
        n_valid, n_bad = 0, 0
        try:
            with _open_binary(file) as f:
                for lineno, raw in enumerate(f, start=1):
                    try:
                        record = _parse_line(raw, file, lineno, max_k)
                    except PreferenceError as e:
                        if not skip_invalid:
                            raise
                        problems.append(str(e))
                        n_bad += 1
                        continue
                    if record is not None:
                        records.append(record)
                        n_valid += 1
                        if limit and len(records) >= limit:
                            return records, problems
        except (OSError, EOFError) as e:  # unreadable file, corrupt or truncated gzip
            raise PreferenceError(file, f"cannot read file: {e}") from e
        if n_valid == 0:
            why = (f"all {n_bad} record(s) are invalid, the first: {problems[-n_bad]}"
                   if n_bad else "the file is empty")
            raise PreferenceError(file, f"no valid preference record ({why}); expected one "
                                  f"object per line like {EXPECTED_FORMS}")
    return records, problems


def append_record(path: str | os.PathLike, record: PreferenceRecord | dict) -> None:
    """Append one record as a JSON line. The line goes out in one write() and is fsynced, so a
    killed process leaves at most a torn last line (see `repair_torn_tail`). A dict is checked
    (any accepted form) and written in the K-wise/scalar form."""
    path = Path(path)
    if path.name.lower().endswith(".gz"):
        raise PreferenceError(path, "cannot append to a gzip file; write a plain .jsonl file")
    if isinstance(record, dict):
        responses = record.get("responses")
        k = len(responses) if isinstance(responses, list) else 0
        record = parse_record(record, f"record to append to {path}", max(k, DEFAULT_MAX_K))
    data = _line(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        while written < len(data):  # a regular file takes it all at once unless the disk is full
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def write_records(path: str | os.PathLike, records: Iterable[PreferenceRecord]) -> None:
    """Replace `path` with these records, one JSON line each as `append_record` writes them: all
    at once, fsynced, renamed over the old file (a crash leaves the old file or the new one)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            for record in records:
                f.write(_line(record))
            f.flush()
            os.fsync(f.fileno())

    atomic_write(Path(path), write)


def _line(record: PreferenceRecord) -> bytes:
    return (json.dumps(record.to_json(), ensure_ascii=False) + "\n").encode("utf-8")


def _last_line_start(f, end: int, chunk_bytes: int = 1 << 16) -> int:
    """Offset just after the last b"\\n" before `end` (0 if there is none)."""
    pos = end
    while pos > 0:
        start = max(0, pos - chunk_bytes)
        f.seek(start)
        i = f.read(pos - start).rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


def repair_torn_tail(path: str | os.PathLike) -> int:
    """Remove an incomplete last line (what a crash during `append_record` leaves); returns the
    number of bytes removed. A last line that is a complete JSON object but lacks its "\\n" keeps
    the record and only gets the newline. A missing or empty file is left alone."""
    path = Path(path)
    if path.name.lower().endswith(".gz"):
        raise PreferenceError(path, "cannot repair a gzip file in place; write a plain .jsonl file")
    if not path.exists():
        return 0
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        has_newline = f.read(1) == b"\n"
        start = _last_line_start(f, size - 1 if has_newline else size)
        f.seek(start)
        tail = f.read(size - start)
        if not tail.strip():
            return 0
        try:
            complete = isinstance(json.loads(tail.decode("utf-8")), dict)
        except (UnicodeDecodeError, json.JSONDecodeError):
            complete = False
        if complete and has_newline:
            return 0
        if complete:
            f.write(b"\n")
            removed = 0
        else:
            f.truncate(start)
            removed = size - start
        f.flush()
        os.fsync(f.fileno())
    return removed
