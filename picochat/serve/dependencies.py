"""FastAPI dependencies of the routes: the app's `Service`, and the API key check.

Both are coroutines: FastAPI would run a plain function in its thread pool, a thread hop per
request for a dictionary lookup.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from picochat.serve.errors import APIError
from picochat.serve.service import Service


async def get_service(request: Request) -> Service:
    """The Service `create_app` was given."""
    return request.app.state.service


async def require_key(request: Request) -> None:
    """401 unless the request carries 'Authorization: Bearer KEY' with the server's key (if it has one)."""
    service = request.app.state.service
    if service.api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "no API key given; send the header 'Authorization: Bearer YOUR_KEY'",
                       code="invalid_api_key")
    if not secrets.compare_digest(token.strip().encode(), service.api_key.encode()):
        raise APIError(401, "incorrect API key", code="invalid_api_key")


AUTH = [Depends(require_key)]  # `dependencies=AUTH` on a route or router: the API key is required there
ServiceDep = Annotated[Service, Depends(get_service)]  # a route's parameter `service: ServiceDep`
