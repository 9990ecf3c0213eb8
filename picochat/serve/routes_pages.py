"""What a browser or a monitor opens without an API key: the chat page and the health check.

    GET  /health     liveness and engine load
    GET  /           the chat page (static/chat.html; pages.py adds its security headers)
    GET  /label      "labeling is off", when the server has no labeling queue (else label_api.py)
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from picochat.serve.dependencies import ServiceDep
from picochat.serve.pages import message_page, page_response

router = APIRouter()
labeling_off = APIRouter()  # in place of label_api.router


@router.get("/health")
async def health(service: ServiceDep):
    return {"status": "ok", "model": service.model_name, "reward_model": service.reward_name,
            "context": service.context, "auth_required": service.api_key is not None,
            "labeling": service.labeling is not None, "batching": service.engine.batching,
            **service.engine.load()}


@router.get("/", response_class=HTMLResponse)
async def chat_page():
    return page_response("chat.html")


@labeling_off.get("/label", response_class=HTMLResponse)
async def no_labeling():
    return message_page("<p>Labeling is off on this server: start it with <code>picochat serve --ckpt "
                        "DIR --label-out FILE</code>.</p>", status_code=404)
