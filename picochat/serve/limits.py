"""What one request may ask of the server, and the checks that enforce it.

A public endpoint gets oversized and malformed input sooner or later. Every limit here is checked
before any work is queued, and each failure says which limit, its value, and what to change.
Raw body size is enforced while the body is read (`body_limit.BodySizeLimit`), so a huge upload
is cut off instead of being buffered first.
"""

from __future__ import annotations

from dataclasses import dataclass

from picochat.serve.errors import APIError


@dataclass(frozen=True)
class ServeLimits:
    max_body_bytes: int = 1 << 20  # 1 MiB of JSON per request
    max_messages: int = 64  # messages in one conversation
    max_chars: int = 32_000  # characters of message content in one request, summed
    max_n: int = 8  # answers per request
    max_stop: int = 4  # stop strings per request (OpenAI allows 4)
    max_stop_chars: int = 64  # characters per stop string
    max_prompts: int = 8  # prompts in one /v1/completions request
    max_score_responses: int = 16  # responses in one /v1/score request
    default_max_tokens: int = 256  # when the request gives none (and the context leaves room)

    def check_n(self, n: int) -> None:
        if n > self.max_n:
            raise APIError(400, f"n is {n}, but this server returns at most {self.max_n} answers per request",
                           param="n")

    def check_stop(self, stop: list[str]) -> None:
        if len(stop) > self.max_stop:
            raise APIError(400, f"stop has {len(stop)} strings; at most {self.max_stop} are allowed", param="stop")
        for s in stop:
            if not s:
                raise APIError(400, "stop strings must not be empty", param="stop")
            if len(s) > self.max_stop_chars:
                raise APIError(400, f"a stop string is {len(s)} characters; at most {self.max_stop_chars} "
                               "are allowed", param="stop")

    def check_texts(self, texts: list[str], what: str, max_items: int, param: str) -> None:
        """Count and total size of the user-supplied texts of one request."""
        if len(texts) > max_items:
            raise APIError(400, f"{len(texts)} {what} in one request; at most {max_items} are allowed",
                           param=param, code="request_too_large")
        chars = sum(len(t) for t in texts)
        if chars > self.max_chars:
            raise APIError(400, f"the request holds {chars} characters of {what}; at most {self.max_chars} "
                           "are allowed", param=param, code="request_too_large")

    def resolve_max_tokens(self, requested: int | None, prompt_tokens: int, context: int) -> int:
        """The number of tokens to generate: as requested, or the default; the prompt plus the
        answer must fit the model's context (400 context_length_exceeded otherwise)."""
        room = context - prompt_tokens
        if room < 1 or (requested is not None and requested > room):
            asked = f" + max_tokens {requested}" if requested is not None else ""
            raise APIError(
                400, f"this model's context is {context} tokens; the prompt is {prompt_tokens} tokens{asked}. "
                "Shorten the conversation or lower max_tokens.",
                param="messages" if room < 1 else "max_tokens", code="context_length_exceeded")
        return requested if requested is not None else min(self.default_max_tokens, room)
