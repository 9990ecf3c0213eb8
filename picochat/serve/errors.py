"""Errors in OpenAI's shape, so clients that handle OpenAI's errors handle ours:

    HTTP 4xx/5xx  {"error": {"message": "...", "type": "invalid_request_error", "param": "n", "code": null}}

400 a request that cannot be served: malformed JSON, a parameter of the wrong type or out of range
(OpenAI answers these with 400, and its client raises BadRequestError for them), a bad
conversation, too long for the context, a Host name this server does not answer to; 401 no or
wrong API key; 403 a browser write from another site (Origin); 404 unknown model or route; 409 a
prompt that is already labeled; 413 body too large; 429 the queue is full (retry later); 500 a bug.
FastAPI is imported only where a response is built, so the CLI's --help works without it.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger("picochat.serve")

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 409: "invalid_request_error",
               413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
               500: "server_error", 503: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}

    def json_bytes(self) -> bytes:
        return json.dumps(self.body()).encode("utf-8")

    def response(self):
        from fastapi.responses import JSONResponse  # lazy: limits.py and hosts.py (the CLI) need no FastAPI

        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    async def send(self, send) -> None:
        """Answer with this error from ASGI middleware, before the app has seen the request."""
        body = self.json_bytes()
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _describe_validation(errors: list[dict]) -> tuple[str, str | None, bool]:
    """(message, param, whether the body was not JSON at all) from pydantic's error list."""
    parts, param = [], None
    for e in errors[:5]:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        if e.get("type") == "json_invalid":
            return f"the request body is not valid JSON: {e.get('msg')}", None, True
        where = ".".join(loc) or "body"
        param = param or (loc[0] if loc else None)
        message = str(e.get("msg", "")).removeprefix("Value error, ")  # pydantic's prefix for our own checks
        parts.append(f"{where}: {message}")
    return "; ".join(parts), param, False


def install_error_handlers(app) -> None:
    """Make every error of `app` (a FastAPI app) answer in OpenAI's shape."""
    # lazy: this module is imported by the CLI's argument parsing, which must work without FastAPI
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        message, param, not_json = _describe_validation(list(exc.errors()))
        if not_json:
            return APIError(400, message, code="invalid_json").response()
        return APIError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        code = "request_too_large" if exc.status_code == 413 else None  # limits.BodySizeLimit, mid-body
        return APIError(exc.status_code, message, code=code).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error for %s %s", request.method, request.url.path)
        return APIError(500, f"internal error: {type(exc).__name__}").response()
