"""Human labeling: which prompts are left, which answers are on screen, where rankings go.

InstructGPT's labelers see one prompt and K answers sampled from the SFT model, and order the
answers from best to worst. The labeling page (`/label`) does that; this module is its memory:

- **Prompts** come from a file (`--label-prompts`, JSONL: `{"messages": [...]}` or
  `{"prompt": str | messages}` per line) and from prompts the labeler types in the page. A prompt's
  id is `prompt_key(messages)`, the same key the built-in labeler resumes by. A prompt that leaves
  the model no room to answer (`context_check`) is never queued: it would be refused every time it
  came up, and everything behind it would wait forever.
- **Pending answers.** The K answers sampled for a prompt are kept (and written to
  `<out>.pending.json`, atomically) until the prompt is ranked, so reloading the page, or
  restarting the server, shows the same answers again instead of sampling new ones. At most
  MAX_WAITING typed prompts and MAX_WAITING answer sets wait; the oldest make room.
- **Rankings** are appended to the preference JSONL (`append_record`: one write and fsync per
  line) in the K-wise format that `picochat rm` and `picochat dpo` read. A prompt already in the
  file is done: the first ranking wins, and submitting it again (a double click, a second tab) is
  validated like the first and then refused, never written twice.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from picochat.core.chat import ChatFormatError, render_prompt, validate_messages
from picochat.core.io import atomic_write_json
from picochat.data.preferences import (
    DEFAULT_MAX_K,
    PreferenceError,
    append_record,
    parse_record,
    prompt_key,
    read_preferences,
    repair_torn_tail,
)
from picochat.data.readers import CorpusError, iter_json_lines

log = logging.getLogger("picochat.serve")

# Typed prompts waiting to be ranked, and sets of sampled answers waiting: each one is rewritten
# into the pending file on every change, so neither may grow without bound (a labeler who types
# prompts and never ranks them, or a script that posts them).
MAX_WAITING = 50

PromptCheck = Callable[[list[dict]], "str | None"]  # messages -> why they cannot be labeled, or None


def context_check(tokenizer, context: int) -> PromptCheck:
    """A PromptCheck: the rendered prompt must leave room for at least one answer token in the
    model's `context`."""

    def problem(messages: list[dict]) -> str | None:
        try:
            tokens = len(render_prompt(tokenizer, messages))
        except ChatFormatError as e:
            return str(e)
        if tokens >= context:
            return (f"the prompt is {tokens} tokens, which leaves no room for an answer in the model's "
                    f"{context}-token context; shorten it")
        return None

    return problem


def read_label_prompts(path: str | Path, check: PromptCheck | None = None) -> list[list[dict]]:
    """Prompts to label from a JSONL file: each line `{"messages": [...]}` (a conversation; anything
    after its last user message, such as a reference answer, is dropped) or `{"prompt": str}` /
    `{"prompt": [messages]}`. Errors name the file and line. A prompt that `check` rejects (too
    long for the model) is skipped with a warning naming its line, so the prompts after it are
    still labeled."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(path, "no such prompt file; expected JSONL with {\"messages\": [...]} or "
                          "{\"prompt\": \"...\"} per line")
    prompts: list[list[dict]] = []
    for lineno, obj in iter_json_lines(path):
        value = obj.get("messages", obj.get("prompt")) if isinstance(obj, dict) else None
        if value is None:
            raise CorpusError(path, "expected an object with \"messages\" or \"prompt\"", lineno)
        if isinstance(value, str):
            value = [{"role": "user", "content": value}]
        try:
            messages = validate_messages(value, where=f"{path}, line {lineno}")
        except ChatFormatError as e:
            raise CorpusError(path, str(e).split(": ", 1)[-1], lineno) from None
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if last_user is None or not messages[last_user]["content"].strip():
            raise CorpusError(path, "the conversation has no (non-empty) user message to answer", lineno)
        problem = check(messages[: last_user + 1]) if check is not None else None
        if problem is not None:
            log.warning("%s, line %d: skipped, %s", path, lineno, problem)
            continue
        prompts.append(messages[: last_user + 1])
    return prompts


class LabelStore:
    """Thread-safe state of the labeling page. `out` is the preference JSONL rankings go to;
    `check` rejects prompts the model cannot answer (context_check), also those a pending file
    of an earlier run holds."""

    def __init__(self, out: str | Path, prompts: list[list[dict]] = (), k: int = 4,
                 check: PromptCheck | None = None):
        if not 2 <= k <= DEFAULT_MAX_K:
            raise ValueError(f"K (answers per prompt) must be in 2..{DEFAULT_MAX_K}, got {k}")
        self.out, self.k = Path(out), k
        if not self.out.name.endswith(".jsonl"):
            raise ValueError(f"{self.out}: rankings are written as JSON lines; name the file *.jsonl")
        self.state_file = self.out.with_name(self.out.name + ".pending.json")
        self._lock = threading.Lock()
        self.prompts: dict[str, list[dict]] = {}  # id -> messages, in labeling order: file, then typed
        for messages in prompts:
            self.prompts.setdefault(prompt_key(messages), messages)
        self.n_file_prompts = len(self.prompts)
        self.done: dict[str, int] = {}  # id of a labeled prompt -> its number of responses
        repair_torn_tail(self.out)  # a server killed mid-append leaves at most a torn last line
        if self.out.exists() and self.out.stat().st_size > 0:
            records, _ = read_preferences(self.out, skip_invalid=True)
            self.done = {prompt_key(r.prompt): len(r.responses) for r in records if r.prompt is not None}
        self.pending: dict[str, dict] = {}  # id -> {"prompt", "responses", "finished", "sampling"}
        if self.state_file.exists():
            self._restore(json.loads(self.state_file.read_text(encoding="utf-8")), check)

    def _restore(self, state: dict, check: PromptCheck | None) -> None:
        """Pending answers and typed prompts of an earlier run, less those `check` rejects (an
        older version stored typed prompts before checking their length) and the oldest over
        MAX_WAITING."""
        dropped = 0
        for pid, messages in state.get("typed", {}).items():
            problem = check(messages) if check is not None else None
            if problem is not None:
                log.warning("%s: dropped a typed prompt saved by an earlier run: %s", self.state_file, problem)
                dropped += 1
            elif pid not in self.prompts:
                self.prompts[pid] = messages
        for pid, item in state.get("pending", {}).items():
            if pid in self.done:
                continue
            problem = check(item["prompt"]) if check is not None else None
            if problem is not None:
                log.warning("%s: dropped the answers to a prompt saved by an earlier run: %s", self.state_file,
                            problem)
                dropped += 1
            else:
                self.pending[pid] = item
        dropped += self._trim()
        if dropped:
            self._save()

    # ---- queries ------------------------------------------------------------------------------

    def progress(self) -> dict:
        with self._lock:
            return {"labeled": sum(pid in self.done for pid in self.prompts), "total": len(self.prompts)}

    def next_prompt(self) -> tuple[str, list[dict], dict | None] | None:
        """(id, messages, pending answers or None) of what to show: the answers on screen before
        (latest first) if any, else the first prompt not yet labeled; None when all are done."""
        with self._lock:
            for pid in reversed(self.pending):
                if pid not in self.done:
                    return pid, self.pending[pid]["prompt"], self.pending[pid]
            for pid, messages in self.prompts.items():
                if pid not in self.done:
                    return pid, messages, None
            return None

    def item(self, pid: str) -> dict | None:
        with self._lock:
            return self.pending.get(pid)

    # ---- changes ------------------------------------------------------------------------------

    def add_typed(self, messages: list[dict]) -> str:
        """Queue a prompt typed in the page (checked by the caller: it fits the context)."""
        pid = prompt_key(messages)
        with self._lock:
            if pid not in self.prompts:
                self.prompts[pid] = messages
                self._trim()
                self._save()
        return pid

    def set_answers(self, pid: str, messages: list[dict], responses: list[str], finished: list[bool],
                    sampling: dict) -> dict:
        """Keep the K answers sampled for a prompt until it is ranked; the first answers kept for a
        prompt win (a second sampling for the same prompt, from another tab, is discarded)."""
        with self._lock:
            if pid not in self.pending:
                self.pending[pid] = {"id": pid, "prompt": messages, "responses": list(responses),
                                     "finished": list(finished), "sampling": sampling}
                self._trim()
                self._save()
            return self.pending[pid]

    def submit(self, pid: str, ranking: list, all_bad: bool, labeler: str, extra_meta: dict | None = None
               ) -> bool:
        """Append the ranking of a pending prompt's answers; returns False if the prompt was already
        labeled (the first ranking wins; nothing is written). Raises KeyError for an unknown prompt,
        PreferenceError for a ranking that does not order every answer exactly once, also when
        the prompt was labeled already."""
        with self._lock:
            if pid in self.done:
                check_ranking(ranking, self.done[pid], f"ranking of prompt {pid}")
                return False
            item = self.pending.get(pid)
            if item is None:
                raise KeyError(pid)
            record = {
                "prompt": item["prompt"], "responses": item["responses"], "ranking": ranking,
                "all_bad": bool(all_bad),
                "meta": {"labeler": labeler or "anonymous", "source": "web",
                         "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         "finished": item["finished"], "prompt_id": pid, **item.get("sampling", {}),
                         **(extra_meta or {})},
            }
            parsed = parse_record(record, f"ranking of prompt {pid}", max_k=DEFAULT_MAX_K)  # validate first
            append_record(self.out, parsed)
            self.done[pid] = len(item["responses"])
            self.prompts.setdefault(pid, item["prompt"])
            del self.pending[pid]
            self._save()
            return True

    def _trim(self) -> int:
        """Drop the oldest typed prompts not yet labeled, and the oldest pending answers, over
        MAX_WAITING; returns how many were dropped. Caller holds the lock (or is __init__)."""
        waiting = [pid for pid in list(self.prompts)[self.n_file_prompts:] if pid not in self.done]
        dropped = 0
        for pid in waiting[: max(0, len(waiting) - MAX_WAITING)]:
            del self.prompts[pid]
            self.pending.pop(pid, None)
            dropped += 1
        for pid in list(self.pending)[: max(0, len(self.pending) - MAX_WAITING)]:
            del self.pending[pid]  # its prompt stays queued; it gets new answers when it comes up
            dropped += 1
        if dropped:
            log.warning("labeling: more than %d typed prompts or answer sets were waiting to be ranked; dropped "
                        "the %d oldest", MAX_WAITING, dropped)
        return dropped

    def _save(self) -> None:
        typed = {pid: m for i, (pid, m) in enumerate(self.prompts.items()) if i >= self.n_file_prompts}
        atomic_write_json(self.state_file, {"pending": self.pending, "typed": typed})


def check_ranking(ranking: list, k: int, where: str) -> None:
    """Raise PreferenceError unless `ranking` orders the response indices 0..k-1 (ties as lists),
    as parse_record checks it; for a prompt whose answers are no longer in memory."""
    parse_record({"prompt": "(labeled already)", "responses": ["(answer)"] * k, "ranking": ranking}, where,
                 max_k=DEFAULT_MAX_K)


__all__ = ["MAX_WAITING", "LabelStore", "PreferenceError", "check_ranking", "context_check", "read_label_prompts"]
