"""POST /v1/score: reward-model scores of responses to a conversation (picochat's own endpoint;
the server has a reward model when started with --rm; API key required, if set).

    {"messages": [...] or "prompt": "...", "responses": ["...", ...], "finished": [true, ...]}
    -> {"object": "list", "model": ..., "data": [{"object": "score", "index": 0, "score": 1.3}, ...],
        "scores": [1.3, ...]}
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from picochat.serve.dependencies import AUTH, ServiceDep
from picochat.serve.errors import APIError
from picochat.serve.schemas import ScoreRequest, chat_messages
from picochat.serve.service import Service

router = APIRouter(dependencies=AUTH)


@router.post("/v1/score")
async def score(body: ScoreRequest, service: ServiceDep):
    """The reward model's score of each response as the answer to the conversation."""
    rm = reward_model(service, body.model)
    messages = scored_conversation(service, body)

    def run() -> list[float]:
        with service.score_lock:  # one scoring forward at a time; generation runs beside it
            return rm.score([messages] * len(body.responses), body.responses, body.finished)

    scores = await run_in_threadpool(run)
    return {"object": "list", "model": service.reward_name,
            "data": [{"object": "score", "index": i, "score": s} for i, s in enumerate(scores)],
            "scores": scores}


def reward_model(service: Service, name: str | None):
    """The server's reward model, if it has one and `name` (when given) is its name; 404 otherwise."""
    if service.reward_model is None:
        raise APIError(404, "no reward model is loaded; start the server with --rm DIR (e.g. runs/tiny/rm)",
                       code="model_not_found")
    if name is not None and name != service.reward_name:
        raise APIError(404, f"the reward model {name!r} does not exist; this server scores with "
                       f"{service.reward_name!r}", param="model", code="model_not_found")
    return service.reward_model


def scored_conversation(service: Service, body: ScoreRequest) -> list[dict]:
    """The conversation the responses answer, checked: within the limits, ending with a user message."""
    messages = chat_messages(body.messages) if body.messages is not None else [
        {"role": "user", "content": body.prompt}]
    limits = service.limits
    limits.check_texts([m["content"] for m in messages] + body.responses, "messages and responses",
                       limits.max_messages + limits.max_score_responses, "responses")
    if len(body.responses) > limits.max_score_responses:
        raise APIError(400, f"{len(body.responses)} responses; at most {limits.max_score_responses} per "
                       "request", param="responses", code="request_too_large")
    if messages[-1]["role"] != "user":
        raise APIError(400, "the conversation must end with a user message (the responses answer it)",
                       param="messages")
    return messages
