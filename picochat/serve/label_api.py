"""Routes of the labeling page: `/label` and its small JSON API.

    GET  /label                 the page (static/label.html)
    GET  /label/api/next        the prompt to rank now, with its K answers (sampled on first view)
    POST /label/api/prompt      {"text": "..."}: label a prompt typed in the page
    POST /label/api/submit      {"id", "ranking": [[best...], ..., [worst...]], "all_bad", "labeler"}:
                                200, 400 for a ranking that is not a permutation of the answers
                                (strict integers), 409 if the prompt is labeled already

Answers are sampled by the same batching engine as the chat API (n=K answers to one prompt share
one prefill), at temperature 1 as the built-in labeler does, so people rank the same kind of
answers the reward model will later score. `create_app` includes `router` only when the server
has a labeling queue, and keeps its `LabelDesk` as `app.state.label_desk`.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from picochat.data.preferences import PreferenceError
from picochat.serve.bridge import Submission
from picochat.serve.dependencies import AUTH
from picochat.serve.engine import SamplingParams
from picochat.serve.errors import APIError
from picochat.serve.labeling import context_check
from picochat.serve.limits import ServeLimits
from picochat.serve.pages import page_response
from picochat.serve.schemas import ChatMessage, chat_messages
from picochat.serve.service import Service

LABEL_TEMPERATURE = 1.0
LABEL_MAX_TOKENS = 96  # the built-in labeler's default answer length (LabelConfig.max_new_tokens)


class TypedPrompt(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str | None = Field(default=None, min_length=1)
    messages: list[ChatMessage] | None = None


class Ranking(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str = Field(min_length=1, max_length=64)
    # The JSON as sent: LabelStore.submit checks it (parse_record: integers, each answer exactly once,
    # ties as lists). A pydantic int would turn true into 1 and "1" into 1 first.
    ranking: list = Field(min_length=1)
    all_bad: StrictBool = False
    labeler: str = Field(default="anonymous", max_length=100)


class LabelDesk:
    """The labeling queue (`LabelStore`) as the routes use it: a prompt's K answers are sampled
    on its first view, one prompt at a time, so two tabs never sample the same prompt twice."""

    def __init__(self, service: Service):
        self.service = service
        self.store = service.labeling
        self.prompt_problem = context_check(service.tokenizer, service.context)
        self.sampling_lock = asyncio.Lock()

    async def with_answers(self, pid: str, messages: list[dict]) -> dict:
        """The item of prompt `pid` with its answers, sampling them first if it has none yet."""
        async with self.sampling_lock:
            item = self.store.item(pid)
            if item is not None:
                return item
            service = self.service
            prompt = service.prompt_ids(messages)
            params = self.sampling_params(len(prompt))
            texts, reasons, _ = await Submission(service, [prompt], self.store.k, params).collect()
            return self.store.set_answers(pid, messages, texts, [r == "stop" for r in reasons],
                                          {"model": service.model_name, "temperature": LABEL_TEMPERATURE,
                                           "max_tokens": params.max_tokens})

    def sampling_params(self, prompt_tokens: int) -> SamplingParams:
        context = self.service.context
        room = context - prompt_tokens
        if room < 1:  # prompts are checked before they are queued; this is the last guard
            raise APIError(400, f"this prompt is {prompt_tokens} tokens, which leaves no room for an answer in "
                           f"the model's {context}-token context", code="context_length_exceeded")
        tok = self.service.tokenizer
        return SamplingParams(max_tokens=min(LABEL_MAX_TOKENS, room), temperature=LABEL_TEMPERATURE,
                              stop_ids=(tok.im_end_id, tok.eot_id))

    def view(self, pid: str, item: dict) -> dict:
        """What the page shows: the queue's progress and the item to rank."""
        return {"done": False, "progress": self.store.progress(),
                "item": {"id": pid, "prompt": item["prompt"], "responses": item["responses"],
                         "finished": item["finished"]}}


async def get_desk(request: Request) -> LabelDesk:
    return request.app.state.label_desk


DeskDep = Annotated[LabelDesk, Depends(get_desk)]
router = APIRouter()


@router.get("/label", response_class=HTMLResponse)
async def label_page():
    return page_response("label.html")


@router.get("/label/api/next", dependencies=AUTH)
async def next_item(desk: DeskDep):
    """The first prompt of the queue that is not labeled yet, or done."""
    found = desk.store.next_prompt()
    if found is None:
        return {"done": True, "progress": desk.store.progress(), "item": None}
    pid, messages, item = found
    return desk.view(pid, item or await desk.with_answers(pid, messages))


@router.post("/label/api/prompt", dependencies=AUTH)
async def typed_prompt(body: TypedPrompt, desk: DeskDep):
    """Queue a prompt typed in the page and show it with its answers."""
    messages = typed_messages(body, desk.service.limits)
    problem = desk.prompt_problem(messages)  # before it is queued: a prompt refused later would block the queue
    if problem is not None:
        raise APIError(400, problem, param="text" if body.text is not None else "messages",
                       code="context_length_exceeded")
    pid = desk.store.add_typed(messages)
    return desk.view(pid, await desk.with_answers(pid, messages))


@router.post("/label/api/submit", dependencies=AUTH)
async def submit(body: Ranking, desk: DeskDep):
    """Store a ranking of a prompt's answers (the first ranking of a prompt wins)."""
    try:
        written = desk.store.submit(body.id, body.ranking, body.all_bad, body.labeler.strip())
    except KeyError:
        raise APIError(404, f"prompt {body.id} has no answers waiting to be ranked; reload the page",
                       param="id") from None
    except PreferenceError as e:
        raise APIError(400, str(e).split(": ", 1)[-1], param="ranking") from None
    if not written:
        raise APIError(409, f"prompt {body.id} is labeled already; the first ranking was kept", param="id",
                       code="already_labeled")
    return {"ok": True, "progress": desk.store.progress()}


def typed_messages(body: TypedPrompt, limits: ServeLimits) -> list[dict]:
    """The conversation of a typed prompt, checked: within the limits, ending with a user message."""
    if (body.text is None) == (body.messages is None):
        raise APIError(400, "send either text (a user message) or messages", param="text")
    messages = ([{"role": "user", "content": body.text}] if body.text is not None
                else chat_messages(body.messages))
    limits.check_texts([m["content"] for m in messages], "messages", limits.max_messages, "messages")
    if messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        raise APIError(400, "a prompt must end with a non-empty user message", param="messages")
    return messages
