"""Routes of the labeling page: `/label` and its small JSON API.

    GET  /label                 the page (static/label.html)
    GET  /label/api/next        the prompt to rank now, with its K answers (sampled on first view)
    POST /label/api/prompt      {"text": "..."}: label a prompt typed in the page
    POST /label/api/submit      {"id", "ranking": [[best...], ..., [worst...]], "all_bad", "labeler"}:
                                200, 400 for a ranking that is not a permutation of the answers
                                (strict integers), 409 if the prompt is labeled already

Answers are sampled by the same batching engine as the chat API (n=K answers to one prompt share
one prefill), at temperature 1 as the built-in labeler does, so people rank the same kind of
answers the reward model will later score.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from picochat.core.chat import ChatFormatError, render_prompt
from picochat.data.preferences import PreferenceError
from picochat.serve.api import Service, chat_messages
from picochat.serve.bridge import Submission
from picochat.serve.engine import SamplingParams
from picochat.serve.errors import APIError
from picochat.serve.labeling import context_check
from picochat.serve.pages import page_response
from picochat.serve.schemas import ChatMessage

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


def add_label_routes(app: FastAPI, service: Service, auth: list) -> None:
    store = service.labeling
    prompt_problem = context_check(service.tokenizer, service.context)
    sampling_lock = asyncio.Lock()  # one prompt's K answers at a time: two tabs never sample twice

    async def with_answers(pid: str, messages: list[dict]) -> dict:
        async with sampling_lock:
            item = store.item(pid)
            if item is not None:
                return item
            try:
                prompt = render_prompt(service.tokenizer, messages)
            except ChatFormatError as e:
                raise APIError(400, str(e), param="messages") from None
            room = service.context - len(prompt)
            if room < 1:  # prompts are checked before they are queued; this is the last guard
                raise APIError(400, f"this prompt is {len(prompt)} tokens, which leaves no room for an answer in "
                               f"the model's {service.context}-token context", code="context_length_exceeded")
            tok = service.tokenizer
            params = SamplingParams(max_tokens=min(LABEL_MAX_TOKENS, room), temperature=LABEL_TEMPERATURE,
                                    stop_ids=(tok.im_end_id, tok.eot_id))
            texts, reasons, _ = await Submission(service, [prompt], store.k, params).collect()
            return store.set_answers(pid, messages, texts, [r == "stop" for r in reasons],
                                     {"model": service.model_name, "temperature": LABEL_TEMPERATURE,
                                      "max_tokens": params.max_tokens})

    def view(pid: str, item: dict) -> dict:
        return {"done": False, "progress": store.progress(),
                "item": {"id": pid, "prompt": item["prompt"], "responses": item["responses"],
                         "finished": item["finished"]}}

    @app.get("/label", response_class=HTMLResponse)
    async def label_page():
        return page_response("label.html")

    @app.get("/label/api/next", dependencies=auth)
    async def next_item():
        found = store.next_prompt()
        if found is None:
            return {"done": True, "progress": store.progress(), "item": None}
        pid, messages, item = found
        return view(pid, item or await with_answers(pid, messages))

    @app.post("/label/api/prompt", dependencies=auth)
    async def typed_prompt(body: TypedPrompt):
        if (body.text is None) == (body.messages is None):
            raise APIError(400, "send either text (a user message) or messages", param="text")
        messages = ([{"role": "user", "content": body.text}] if body.text is not None
                    else chat_messages(body.messages))
        service.limits.check_texts([m["content"] for m in messages], "messages", service.limits.max_messages,
                                   "messages")
        if messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
            raise APIError(400, "a prompt must end with a non-empty user message", param="messages")
        problem = prompt_problem(messages)  # before it is queued: a prompt refused later would block the queue
        if problem is not None:
            raise APIError(400, problem, param="text" if body.text is not None else "messages",
                           code="context_length_exceeded")
        pid = store.add_typed(messages)
        return view(pid, await with_answers(pid, messages))

    @app.post("/label/api/submit", dependencies=auth)
    async def submit(body: Ranking):
        try:
            written = store.submit(body.id, body.ranking, body.all_bad, body.labeler.strip())
        except KeyError:
            raise APIError(404, f"prompt {body.id} has no answers waiting to be ranked; reload the page",
                           param="id") from None
        except PreferenceError as e:
            raise APIError(400, str(e).split(": ", 1)[-1], param="ranking") from None
        if not written:
            raise APIError(409, f"prompt {body.id} is labeled already; the first ranking was kept", param="id",
                           code="already_labeled")
        return {"ok": True, "progress": store.progress()}
