"""A minimal client of an OpenAI-compatible chat server, for `picochat chat --url` (stdlib only).

It streams `POST /v1/chat/completions` and yields the text pieces as they arrive. Each SSE line is
a whole JSON object, so a Chinese character is never split between pieces.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator


class ServerError(RuntimeError):
    """The server answered with an error (OpenAI's shape); `code` is e.g. context_length_exceeded."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.code = status, message, code


class ServerUnreachable(RuntimeError):
    """No connection to the server (wrong URL, server not running)."""


class ChatClient:
    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, timeout_s: float = 600):
        self.base = url.rstrip("/")
        if not self.base.endswith("/v1"):
            self.base += "/v1"
        self.api_key, self.timeout_s = api_key, timeout_s
        self.context: int | None = None
        self.model = model or self._first_model()

    def _request(self, path: str, body: dict | None = None):
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.base + path, data=data, headers=headers,
                                         method="GET" if body is None else "POST")
        try:
            return urllib.request.urlopen(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as e:
            try:
                error = json.loads(e.read().decode("utf-8")).get("error", {})
            except (ValueError, AttributeError):
                error = {}
            raise ServerError(e.code, error.get("message") or e.reason, error.get("code")) from None
        except urllib.error.URLError as e:
            raise ServerUnreachable(f"cannot reach {self.base}: {e.reason}") from None

    def _first_model(self) -> str:
        with self._request("/models") as response:
            models = json.loads(response.read().decode("utf-8")).get("data") or []
        if not models:
            raise ServerError(404, f"{self.base}/models lists no model")
        self.context = models[0].get("context_length")  # picochat's servers say; others may not
        return models[0]["id"]

    def stream_chat(self, messages: list[dict], **params) -> Iterator[str]:
        """Yield the reply's text pieces; `params` are OpenAI sampling fields (temperature, ...)."""
        body = {"model": self.model, "messages": messages, "stream": True,
                **{k: v for k, v in params.items() if v is not None}}
        with self._request("/chat/completions", body) as response:
            for raw in response:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    raise ServerError(500, event["error"].get("message", "error"), event["error"].get("code"))
                for choice in event.get("choices", []):
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        yield piece
