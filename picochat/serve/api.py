"""The HTTP app: OpenAI's chat and completions API, the reward model, the web pages.

    GET  /health                  liveness and engine load (no key needed)          routes_pages.py
    GET  /                        the chat page
    GET  /v1/models               the served model                                  routes_openai.py
    POST /v1/chat/completions     chat (streaming SSE or not), n, stop, seed, usage
    POST /v1/completions          raw text continuation (documents start after <|endoftext|>)
    POST /v1/score                reward-model scores of responses (--rm)           routes_score.py
    GET  /label, /label/api/...   the labeling page and its JSON API                label_api.py

Every request first passes `HostGuard` (hosts.py: only this server's host names, no browser
writes from other sites) and `BodySizeLimit` (body_limit.py). SECURITY.md sums up what is exposed.
The routes reach the `Service` (service.py: engine, tokenizer, limits, key) through
`app.state.service`; dependencies.py hands it to them and checks the API key.
"""

from __future__ import annotations

from fastapi import FastAPI

from picochat.serve import label_api, routes_openai, routes_pages, routes_score
from picochat.serve.body_limit import BodySizeLimit
from picochat.serve.errors import install_error_handlers
from picochat.serve.hosts import HostGuard
from picochat.serve.service import Service


def create_app(service: Service) -> FastAPI:
    """The app serving `service`: error handlers in OpenAI's shape, the two guards, the routes
    (the labeling ones only when `service.labeling` is set)."""
    app = FastAPI(title="picochat", version="0.1.0", docs_url="/docs", redoc_url=None)
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=service.limits.max_body_bytes)
    app.add_middleware(HostGuard, policy=service.hosts)  # added last = runs first
    app.include_router(routes_pages.router)
    app.include_router(routes_openai.router)
    app.include_router(routes_score.router)
    if service.labeling is not None:
        app.state.label_desk = label_api.LabelDesk(service)
        app.include_router(label_api.router)
    else:
        app.include_router(routes_pages.labeling_off)
    return app
