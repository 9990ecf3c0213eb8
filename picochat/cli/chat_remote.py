"""`picochat chat --url`: the terminal chat against a running server instead of a local model.

The server renders the template and samples; this side keeps the conversation. When the server
says the conversation no longer fits its context (400 context_length_exceeded), the oldest turn is
dropped and the request retried, as the local chat does before it samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TextIO

from picochat.serve.client import ChatClient, ServerError, ServerUnreachable

BOT_MARK = "bot> "


class RemoteReplier:
    """Answers through a server's /v1/chat/completions, streaming the reply as it arrives; the
    same interface as the local chat's `LocalReplier`."""

    def __init__(self, args, stdout: TextIO):
        self.client = ChatClient(args.url, api_key=args.api_key, model=args.model)
        max_tokens = args.max_new_tokens
        context = self.client.context
        if context and max_tokens > context // 2:
            # As the local chat: a reply may not take more than half of the context.
            max_tokens = max(1, context // 2)
            stdout.write(f"(--max-new-tokens {args.max_new_tokens} is too long for this model's "
                         f"{context}-token context; using {max_tokens})\n")
        self.params = {"temperature": args.temperature, "max_tokens": max_tokens, "seed": args.seed,
                       "top_p": args.top_p if args.top_p and args.top_p < 1 else None}
        if args.top_k and args.top_k > 0:
            self.params["top_k"] = args.top_k  # picochat's servers accept it; OpenAI ignores unknown fields
        stdout.write(f"(connected to {self.client.base}, model {self.client.model})\n")

    def __call__(self, system: str | None, history: list[dict], stdout: TextIO) -> str | None:
        head = [{"role": "system", "content": system}] if system else []
        started = self._start(head, history, stdout)
        if started is None:
            return None
        pieces, first, dropped = started
        if dropped:
            stdout.write(f"(the conversation is longer than the model's context; "
                         f"forgot the oldest {dropped} turn{'s' if dropped > 1 else ''})\n")
        stdout.write(BOT_MARK + first)
        stdout.flush()
        reply = first
        try:
            for piece in pieces:
                stdout.write(piece)
                stdout.flush()
                reply += piece
        except (ServerError, OSError) as e:  # the server went away mid-answer: keep what arrived
            stdout.write(f"\n(the answer was cut off: {e})")
        return reply

    def _start(self, head: list[dict], history: list[dict], stdout: TextIO) -> tuple[Iterator[str], str, int] | None:
        """Send the conversation, dropping its oldest turns (in place) while the server says it does
        not fit: (the answer's remaining pieces, its first piece, turns dropped), or None when the
        server cannot answer (said on stdout)."""
        dropped = 0
        while True:
            pieces = self.client.stream_chat(head + history, **self.params)
            try:
                return pieces, next(pieces, ""), dropped  # the request is sent here: errors come before any text
            except ServerError as e:
                if e.code == "context_length_exceeded" and len(history) > 1:
                    del history[0]  # the oldest user message ...
                    if len(history) > 1 and history[0]["role"] == "assistant":
                        del history[0]  # ... and the reply to it
                    dropped += 1
                    continue
                stdout.write(f"(the server could not answer: {e.message})\n")
                return None
            except ServerUnreachable as e:
                stdout.write(f"({e})\n")
                return None
