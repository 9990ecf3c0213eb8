"""The batching engine: one thread owns the model and steps every running answer together.

A server that takes a lock around `generate()` answers one request at a time: with 16 users the
16th waits for 15 whole answers, and each forward pass computes one row although a batch of 16
rows costs about as much on a CPU (the step is dominated by fixed per-layer overhead, not by the
row count). Continuous batching (Orca, vLLM) removes both problems:

    loop:
        admit waiting requests while the batch has room  -> prefill their prompts (one forward)
        one decode step for every active row              -> sample one token per row
        rows that finished (stop token, stop string, max_tokens, cancelled) leave the batch

A request joins at the next step instead of waiting for the batch to drain, and leaves as soon
as it is done. The per-row KV caches live in one `SlotCache`; sampling reuses
`picochat.core.generate.sample_logits`; text streaming reuses `picochat.core.text_stream`.

Requests talk to the engine through a thread-safe `sink(event)` callback: `Delta` (new text for
one answer), `Finished` (why an answer ended, its token count) and `Failed` (the engine could
not run it). `request.cancel()` (client gone) removes its rows at the next step.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from picochat.core.generate import sample_logits
from picochat.core.model import GPT, KVCache
from picochat.core.precision import autocast
from picochat.core.text_stream import IncrementalDecoder, StopStringFilter
from picochat.core.tokenizer import Tokenizer
from picochat.serve.slot_cache import SlotCache

log = logging.getLogger("picochat.serve")


class QueueFull(RuntimeError):
    """The engine's waiting queue is full; the caller should answer 429 and the client retry."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop strings: the text ends before the first one
    stop_ids: tuple[int, ...] = ()  # stop tokens, e.g. <|im_end|>: not part of the text


@dataclass(frozen=True)
class Delta:
    index: int  # which of the request's n answers
    text: str


@dataclass(frozen=True)
class Finished:
    index: int
    finish_reason: str  # "stop" (stop token or stop string) or "length" (max_tokens)
    completion_tokens: int  # tokens sampled for this answer, a final stop token included


@dataclass(frozen=True)
class Failed:
    message: str


Event = Delta | Finished | Failed
_ids = itertools.count()


class GenerationRequest:
    """A prompt (token ids) and n answers to sample for it, reported through `sink`."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, sink: Callable[[Event], None], n: int = 1):
        if not prompt_ids:
            raise ValueError("a prompt needs at least one token")
        if n < 1 or params.max_tokens < 1:
            raise ValueError("n and max_tokens must be >= 1")
        self.id = next(_ids)
        self.prompt_ids, self.params, self.sink, self.n = list(prompt_ids), params, sink, n
        self.generator = None if params.seed is None else torch.Generator().manual_seed(params.seed)
        self.cancelled = False
        self.submitted_at = time.perf_counter()

    def cancel(self) -> None:
        """Stop generating for this request (its client went away). Safe from any thread."""
        self.cancelled = True


class _Row:
    """One answer being generated: a row of the running batch."""

    def __init__(self, request: GenerationRequest, index: int, tokenizer: Tokenizer):
        self.request, self.index = request, index
        self.decoder = IncrementalDecoder(tokenizer)
        self.stops = StopStringFilter(request.params.stop)
        self.n_sampled = 0
        self.last_token = 0


class BatchEngine:
    """Owns the model; `submit()` requests from any thread, they are answered on the engine thread.

    max_batch_rows: answers decoded together (a request with n answers takes n rows).
    batching=False admits one request at a time and lets it finish first: the serialised
    baseline the load benchmark compares against, run by the same code.
    max_queue: requests allowed to wait for a place in the batch; beyond it submit() raises
    QueueFull.
    threads: torch threads of the engine thread. A decode step of a small model is a chain of
    tiny matmuls; OpenMP threads that must meet after each of them lose more than they gain when
    the cores are shared (with the HTTP server's own thread, or other processes), so serving
    uses fewer threads than cores (cli/serve.py picks cores - 1).
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer, *, max_batch_rows: int = 32, max_queue: int = 64,
                 batching: bool = True, precision: str = "fp32", threads: int | None = None):
        if model.cfg.head != "lm":
            raise ValueError(f"the engine needs a language model (head='lm'), got head={model.cfg.head!r}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch_rows, self.max_queue, self.batching = max_batch_rows, max_queue, batching
        self.precision, self.threads = precision, threads
        self.device = next(model.parameters()).device
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        # Twice the context: the frontier can run ahead of the longest row before a compaction.
        self.cache = SlotCache(model.cfg, 2 * model.cfg.max_seq_len, self.device, dtype)
        self.rows: list[_Row] = []  # rows[i] is cache row i
        self._waiting: deque[GenerationRequest] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.stats = {"decode_steps": 0, "prefills": 0, "tokens": 0, "rows_stepped": 0, "requests": 0}

    # ---- public API (any thread) -------------------------------------------------------------

    def start(self) -> BatchEngine:
        self._thread = threading.Thread(target=self._loop, name="picochat-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request; raises QueueFull when max_queue requests are already waiting."""
        if request.params.max_tokens + len(request.prompt_ids) > self.model.cfg.max_seq_len:
            raise ValueError(
                f"prompt ({len(request.prompt_ids)} tokens) + max_tokens ({request.params.max_tokens}) "
                f"exceeds the model's context of {self.model.cfg.max_seq_len} tokens")
        with self._wake:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (max_queue={self.max_queue})")
            self._waiting.append(request)
            self._wake.notify()

    def load(self) -> dict:
        """What the engine is doing now: for /health and the benchmark."""
        with self._wake:
            queued = len(self._waiting)
        rows = list(self.rows)
        return {"queued_requests": queued, "active_rows": len(rows),
                "active_requests": len({id(r.request) for r in rows}), **self.stats}

    # ---- the engine thread -------------------------------------------------------------------

    def _loop(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)  # set in this thread: OpenMP's setting is per thread
        while True:
            with self._wake:
                while not self._stopping and not self._waiting and not self.rows:
                    self._wake.wait()
                if self._stopping:
                    return
            self.step()

    @torch.no_grad()
    def step(self) -> None:
        """One round: admit the waiting requests that fit, prefill them, and decode one token for
        every active row. The engine thread calls it in a loop; tests may call it directly."""
        self._drop_cancelled()  # first, so that their rows make room for waiting requests
        with self._wake:
            admitted = self._take_admissible()
        try:
            admitted = [r for r in admitted if not r.cancelled]
            if admitted:
                self._prefill(admitted)
            if self.rows:
                self._decode_step()
        except Exception as e:  # keep serving: fail the requests in flight, not the server
            log.exception("engine step failed")
            in_flight = {id(r.request): r.request for r in self.rows}
            in_flight.update((id(r), r) for r in admitted)
            for request in in_flight.values():
                request.sink(Failed(f"generation failed: {type(e).__name__}: {e}"))
            self.rows.clear()
            self.cache = SlotCache(self.model.cfg, self.cache.n_slots, self.device, self.cache.dtype)

    def _take_admissible(self) -> list[GenerationRequest]:
        """Pop the waiting requests that fit into the batch now (FIFO; called under the lock)."""
        taken: list[GenerationRequest] = []
        rows = len(self.rows)
        while self._waiting:
            request = self._waiting[0]
            if request.cancelled:
                self._waiting.popleft()
                continue
            busy = rows > 0 or taken
            if busy and (not self.batching or rows + request.n > self.max_batch_rows):
                break
            taken.append(self._waiting.popleft())
            rows += request.n
        return taken

    def _drop_cancelled(self) -> None:
        for i in reversed(range(len(self.rows))):
            if self.rows[i].request.cancelled:
                self._remove_row(i)

    def _remove_row(self, i: int) -> None:
        moved = self.cache.remove_row(i)
        if moved is not None:
            self.rows[i] = self.rows[moved]
        self.rows.pop()

    def _prefill(self, requests: list[GenerationRequest]) -> None:
        """One forward over the new prompts (left-padded, one row per request), then sample the
        first token of each of their answers."""
        longest = max(len(r.prompt_ids) for r in requests)
        B = len(requests)
        ids = torch.full((B, longest), self.tokenizer.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((B, longest), dtype=torch.long, device=self.device)
        for j, r in enumerate(requests):
            ids[j, longest - len(r.prompt_ids):] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[j, longest - len(r.prompt_ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
        prefill = KVCache(self.model.cfg, B, longest)
        with autocast(self.precision, self.device):
            logits = self.model(ids, position_ids=positions, attention_mask=mask, kv_cache=prefill)[:, -1]  # (B, V)
        sources = [j for j, r in enumerate(requests) for _ in range(r.n)]
        lengths = [len(requests[j].prompt_ids) for j in sources]
        self.cache.add_rows(prefill, sources, lengths)
        new_rows = [_Row(r, i, self.tokenizer) for r in requests for i in range(r.n)]
        self.rows.extend(new_rows)
        self.stats["prefills"] += 1
        self.stats["requests"] += B
        first = len(self.rows) - len(new_rows)
        self._sample_and_emit(logits[sources], list(range(first, len(self.rows))))

    def _decode_step(self) -> None:
        view, positions, mask = self.cache.step_inputs()
        tokens = torch.tensor([[r.last_token] for r in self.rows], dtype=torch.long, device=self.device)  # (R, 1)
        with autocast(self.precision, self.device):
            logits = self.model(tokens, position_ids=positions, attention_mask=mask, kv_cache=view)[:, -1]  # (R, V)
        self.cache.advance()
        self.stats["decode_steps"] += 1
        self.stats["rows_stepped"] += len(self.rows)
        self._sample_and_emit(logits, list(range(len(self.rows))))

    def _sample_and_emit(self, logits: torch.Tensor, row_ids: list[int]) -> None:
        """Sample the next token of rows `row_ids` (logits[k] belongs to row_ids[k]), stream their
        text, and retire the rows that finished."""
        groups: dict[tuple, list[int]] = {}  # rows that sample with the same settings and RNG
        for k, i in enumerate(row_ids):
            request = self.rows[i].request
            p = request.params
            key = (p.temperature, p.top_k, p.top_p, id(request.generator) if request.generator else None)
            groups.setdefault(key, []).append(k)
        tokens = [0] * len(row_ids)
        for ks in groups.values():
            request = self.rows[row_ids[ks[0]]].request
            p = request.params
            picked = sample_logits(logits[ks], p.temperature, p.top_k, p.top_p, request.generator)
            for k, token in zip(ks, picked.tolist()):
                tokens[k] = token
        finished: list[int] = []
        for i, token in zip(row_ids, tokens):
            if self._advance_row(self.rows[i], token):
                finished.append(i)
        self.stats["tokens"] += len(row_ids)
        for i in sorted(finished, reverse=True):
            self._remove_row(i)

    def _advance_row(self, row: _Row, token: int) -> bool:
        """Take one sampled token for `row`; returns True when the answer is complete."""
        p = row.request.params
        row.n_sampled += 1
        row.last_token = token
        if token in p.stop_ids:
            return self._finish(row, "stop", self._drain(row)[0])
        text, hit_stop = row.stops.feed(row.decoder.push(token))
        if hit_stop:
            return self._finish(row, "stop", text)
        if row.n_sampled >= p.max_tokens:
            tail, hit_stop = self._drain(row)
            return self._finish(row, "stop" if hit_stop else "length", text + tail)
        if text:
            row.request.sink(Delta(row.index, text))
        return False

    @staticmethod
    def _drain(row: _Row) -> tuple[str, bool]:
        """The text still held back when an answer ends: an incomplete last character, and a tail
        that might have become a stop string. Returns (text, whether it holds a stop string)."""
        tail, hit_stop = row.stops.feed(row.decoder.flush())
        return tail + row.stops.flush(), hit_stop

    @staticmethod
    def _finish(row: _Row, reason: str, text: str) -> bool:
        if text:
            row.request.sink(Delta(row.index, text))
        row.request.sink(Finished(row.index, reason, row.n_sampled))
        return True
