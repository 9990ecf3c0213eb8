"""Between the event loop and the engine thread: submitting requests, receiving their events,
and giving up on them when the client goes away.

The engine runs on its own thread and reports through `sink(event)` callbacks; the routes are
coroutines on the event loop. `Submission` submits one request per prompt and exposes their
events as an async iterator; `collect_or_cancel` and `stream_response` end the generation when
the client disconnects (a non-streaming client is polled; a stream is cancelled by Starlette).
"""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from picochat.serve.engine import Delta, Failed, Finished, GenerationRequest, QueueFull, SamplingParams
from picochat.serve.errors import APIError


class EventRelay:
    """Hands engine events to the event loop, one wake-up for many events.

    One engine step makes an event for every active answer. Waking the loop once per event
    (`call_soon_threadsafe` each time) costs a self-pipe write and a GIL hand-over per token per
    client; instead events are collected and one scheduled callback delivers all that arrived."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._pending: deque = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def put(self, queue: asyncio.Queue, item) -> None:  # engine thread
        with self._lock:
            self._pending.append((queue, item))
            if self._scheduled:
                return
            self._scheduled = True
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:  # event loop
        with self._lock:
            items, self._pending = self._pending, deque()
            self._scheduled = False
        for queue, item in items:
            queue.put_nowait(item)


_relays: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, EventRelay] = weakref.WeakKeyDictionary()


def relay_for(loop: asyncio.AbstractEventLoop) -> EventRelay:
    """The relay of an event loop (one per loop: a server has one, tests start several)."""
    relay = _relays.get(loop)
    if relay is None:
        relay = _relays[loop] = EventRelay(loop)
    return relay


class Submission:
    """One or more engine requests (one per prompt) whose events arrive on one asyncio queue, as
    (request number, event)."""

    def __init__(self, service, prompts: list[list[int]], n: int, params: SamplingParams):
        relay = relay_for(asyncio.get_running_loop())
        self.queue: asyncio.Queue = asyncio.Queue()
        self.n = n
        self.requests: list[GenerationRequest] = []
        for k, ids in enumerate(prompts):
            request = GenerationRequest(ids, params, self._sink(relay, k), n=n)
            try:
                service.engine.submit(request)
            except QueueFull as e:
                self.cancel()
                raise APIError(429, f"the server is busy ({e}); retry shortly", code="queue_full",
                               headers={"Retry-After": "1"}) from None
            self.requests.append(request)

    def _sink(self, relay, k: int):
        """Where the engine delivers events of prompt k: this request's queue, tagged with k."""
        return lambda event: relay.put(self.queue, (k, event))

    def cancel(self) -> None:
        for r in self.requests:
            r.cancel()

    async def events(self) -> AsyncIterator[tuple[int, Delta | Finished]]:
        """(choice index, event) until every answer of every prompt has finished."""
        remaining = len(self.requests) * self.n
        while remaining:
            k, event = await self.queue.get()
            if isinstance(event, Failed):
                raise APIError(500, event.message, code="generation_failed")
            if isinstance(event, Finished):
                remaining -= 1
            yield k * self.n + event.index, event

    async def collect(self) -> tuple[list[str], list[str], list[int]]:
        """(texts, finish_reasons, completion_tokens) per choice, when all are done."""
        total = len(self.requests) * self.n
        texts, reasons, tokens = [""] * total, ["length"] * total, [0] * total
        async for i, event in self.events():
            if isinstance(event, Delta):
                texts[i] += event.text
            else:
                reasons[i], tokens[i] = event.finish_reason, event.completion_tokens
        return texts, reasons, tokens


async def collect_or_cancel(submission: Submission, request: Request):
    """Wait for all answers, but stop generating (and give up) if the client disconnects."""
    task = asyncio.ensure_future(submission.collect())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                submission.cancel()
                task.cancel()
                raise APIError(499, "client disconnected")
    finally:
        if not task.done():
            submission.cancel()
            task.cancel()


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def stream_response(chunks: AsyncIterator[str], submission: Submission) -> StreamingResponse:
    async def body():
        try:
            async for chunk in chunks:
                yield chunk
        except APIError as e:  # headers are already sent: report the error as an event
            yield sse(e.body())
        finally:
            submission.cancel()  # the client went away mid-answer (or it is done: a no-op)
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
