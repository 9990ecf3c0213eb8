"""`BodySizeLimit`: 413 for a request body over the limit, checked while the body arrives.

The declared Content-Length is checked first; the bytes actually received are counted as well,
because a chunked upload declares no length. A huge upload is cut off instead of buffered.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException

from picochat.serve.errors import APIError


class BodySizeLimit:
    """ASGI middleware around the app: `max_bytes` is ServeLimits.max_body_bytes."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self.error().send(send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.error().message)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge:  # raised outside FastAPI's body reading: no handler has answered yet
            await self.error().send(send)

    def error(self) -> APIError:
        return APIError(413, f"the request body is larger than {self.max_bytes} bytes", code="request_too_large")


class BodyTooLarge(HTTPException):
    """An HTTPException, because FastAPI turns any other error raised while it reads the body into
    400 "There was an error parsing the body"; an HTTPException it passes on to the app's handler
    (errors.install_error_handlers), which answers 413 request_too_large."""

    def __init__(self, message: str):
        super().__init__(413, message)
