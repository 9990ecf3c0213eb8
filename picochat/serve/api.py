"""The HTTP app: OpenAI's chat and completions API, the reward model, the web pages.

    GET  /health                  liveness and engine load (no key needed)
    GET  /v1/models               the served model
    POST /v1/chat/completions     chat (streaming SSE or not), n, stop, seed, usage
    POST /v1/completions          raw text continuation (documents start after <|endoftext|>)
    POST /v1/score                reward-model scores of responses to a conversation (--rm)
    GET  /  and  /label           the chat page and the labeling page (see label_api.py, pages.py)

Every request first passes `HostGuard` (hosts.py: only this server's host names, no browser
writes from other sites) and `BodySizeLimit` (body_limit.py). SECURITY.md sums up what is exposed.

Routes only translate: they validate, render the prompt with the chat template (user text is
never parsed as special tokens), submit a `GenerationRequest` to the `BatchEngine` and turn its
events into OpenAI's JSON (bridge.py carries requests and events between the event loop and the
engine thread).
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from picochat.core.chat import ChatFormatError, render_prompt, validate_messages
from picochat.serve.body_limit import BodySizeLimit
from picochat.serve.bridge import Submission, collect_or_cancel, sse, stream_response
from picochat.serve.engine import BatchEngine, Delta, SamplingParams
from picochat.serve.errors import APIError, install_error_handlers
from picochat.serve.hosts import HostGuard, HostPolicy
from picochat.serve.limits import ServeLimits
from picochat.serve.pages import message_page, page_response
from picochat.serve.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest, ScoreRequest
from picochat.core.tokenizer import Tokenizer

ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system role


@dataclass
class Service:
    """Everything the routes need; built by `picochat serve` (serve_cli.py) or by tests."""

    engine: BatchEngine
    tokenizer: Tokenizer
    model_name: str
    limits: ServeLimits = field(default_factory=ServeLimits)
    api_key: str | None = None
    hosts: HostPolicy = field(default_factory=HostPolicy)  # loopback names only; see hosts.host_policy
    reward_model: object | None = None  # picochat.reward_model.RewardModel
    reward_name: str | None = None
    labeling: object | None = None  # picochat.serve.labeling.LabelStore
    created: int = field(default_factory=lambda: int(time.time()))
    _score_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def context(self) -> int:
        return self.engine.model.cfg.max_seq_len

    def fingerprint(self) -> str:
        """OpenAI's system_fingerprint: what produced the answer besides the seed."""
        from picochat import __version__

        return f"picochat-{__version__}-{self.engine.precision}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


# ---------------------------------------------------------------------------------------------
# Request -> prompt ids and sampling parameters


def chat_messages(messages: list[ChatMessage]) -> list[dict]:
    converted = [{"role": ROLE_ALIASES.get(m.role, m.role), "content": m.text()} for m in messages]
    try:
        return validate_messages(converted, where="messages")
    except ChatFormatError as e:
        raise APIError(400, str(e), param="messages") from None


def sampling_params(service: Service, body, prompt_tokens: int, requested_max_tokens: int | None,
                    stop_ids: tuple[int, ...]) -> SamplingParams:
    limits = service.limits
    limits.check_n(body.n)
    stop = body.stop_list()
    limits.check_stop(stop)
    max_tokens = limits.resolve_max_tokens(requested_max_tokens, prompt_tokens, service.context)
    temperature = 1.0 if body.temperature is None else body.temperature
    return SamplingParams(
        max_tokens=max_tokens, temperature=temperature,
        top_p=body.top_p if body.top_p is not None and body.top_p < 1 else None,
        top_k=body.top_k, seed=None if body.seed is None else body.seed % 2**63,
        stop=tuple(stop), stop_ids=stop_ids)


def check_model(service: Service, name: str | None) -> None:
    if name is not None and name != service.model_name:
        raise APIError(404, f"the model {name!r} does not exist; this server serves {service.model_name!r} "
                       "(see GET /v1/models)", param="model", code="model_not_found")


# ---------------------------------------------------------------------------------------------
# The app


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="picochat", version="0.1.0", docs_url="/docs", redoc_url=None)
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=service.limits.max_body_bytes)
    app.add_middleware(HostGuard, policy=service.hosts)  # added last = runs first

    def require_key(request: Request) -> None:
        if service.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "no API key given; send the header 'Authorization: Bearer YOUR_KEY'",
                           code="invalid_api_key")
        if not secrets.compare_digest(token.strip().encode(), service.api_key.encode()):
            raise APIError(401, "incorrect API key", code="invalid_api_key")

    auth = [Depends(require_key)]

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": service.model_name, "reward_model": service.reward_name,
                "context": service.context, "auth_required": service.api_key is not None,
                "labeling": service.labeling is not None, "batching": service.engine.batching,
                **service.engine.load()}

    @app.get("/v1/models", dependencies=auth)
    async def list_models():
        return {"object": "list", "data": [_model_card(service)]}

    @app.get("/v1/models/{name}", dependencies=auth)
    async def get_model(name: str):
        check_model(service, name)
        return _model_card(service)

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_model(service, body.model)
        messages = chat_messages(body.messages)
        service.limits.check_texts([m["content"] for m in messages], "messages", service.limits.max_messages,
                                   "messages")
        try:
            prompt = render_prompt(service.tokenizer, messages)
        except ChatFormatError as e:
            raise APIError(400, str(e), param="messages") from None
        tok = service.tokenizer
        params = sampling_params(service, body, len(prompt), body.requested_max_tokens(),
                                 (tok.im_end_id, tok.eot_id))
        submission = Submission(service, [prompt], body.n, params)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": cid, "created": created, "model": service.model_name,
                "system_fingerprint": service.fingerprint()}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return stream_response(_chat_chunks(submission, head, len(prompt), include_usage), submission)
        texts, reasons, tokens = await collect_or_cancel(submission, request)
        return {**head, "object": "chat.completion",
                "choices": [{"index": i, "message": {"role": "assistant", "content": t, "refusal": None},
                             "logprobs": None, "finish_reason": r}
                            for i, (t, r) in enumerate(zip(texts, reasons))],
                "usage": usage(len(prompt), sum(tokens))}

    @app.post("/v1/completions", dependencies=auth)
    async def completions(body: CompletionRequest, request: Request):
        check_model(service, body.model)
        texts = body.prompts()
        service.limits.check_texts(texts, "prompts", service.limits.max_prompts, "prompt")
        tok = service.tokenizer
        # Documents start after <|endoftext|> in pretraining, so a continuation starts there too.
        prompts = [[tok.eot_id] + tok.encode(t) for t in texts]
        longest = max(prompts, key=len)
        params = sampling_params(service, body, len(longest), body.max_tokens, (tok.eot_id,))
        submission = Submission(service, prompts, body.n, params)
        prompt_tokens = sum(len(p) for p in prompts)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": service.model_name,
                "system_fingerprint": service.fingerprint()}
        echoes = [texts[i // body.n] if body.echo else "" for i in range(len(prompts) * body.n)]
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return stream_response(_completion_chunks(submission, head, echoes, prompt_tokens, include_usage),
                                   submission)
        outs, reasons, tokens = await collect_or_cancel(submission, request)
        return {**head, "object": "text_completion",
                "choices": [{"index": i, "text": e + t, "logprobs": None, "finish_reason": r}
                            for i, (e, t, r) in enumerate(zip(echoes, outs, reasons))],
                "usage": usage(prompt_tokens, sum(tokens))}

    @app.post("/v1/score", dependencies=auth)
    async def score(body: ScoreRequest):
        rm = service.reward_model
        if rm is None:
            raise APIError(404, "no reward model is loaded; start the server with --rm DIR (e.g. runs/tiny/rm)",
                           code="model_not_found")
        if body.model is not None and body.model != service.reward_name:
            raise APIError(404, f"the reward model {body.model!r} does not exist; this server scores with "
                           f"{service.reward_name!r}", param="model", code="model_not_found")
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

        def run() -> list[float]:
            with service._score_lock:  # one scoring forward at a time; generation runs beside it
                return rm.score([messages] * len(body.responses), body.responses, body.finished)

        scores = await run_in_threadpool(run)
        return {"object": "list", "model": service.reward_name,
                "data": [{"object": "score", "index": i, "score": s} for i, s in enumerate(scores)],
                "scores": scores}

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return page_response("chat.html")

    if service.labeling is not None:
        from picochat.serve.label_api import add_label_routes

        add_label_routes(app, service, auth)
    else:
        @app.get("/label", response_class=HTMLResponse)
        async def no_labeling():
            return message_page("<p>Labeling is off on this server: start it with <code>picochat serve --ckpt "
                                "DIR --label-out FILE</code>.</p>", status_code=404)

    return app


def _model_card(service: Service) -> dict:
    return {"id": service.model_name, "object": "model", "created": service.created, "owned_by": "picochat",
            "context_length": service.context}


async def _chat_chunks(submission: Submission, head: dict, prompt_tokens: int, include_usage: bool):
    def chunk(choices: list[dict]) -> str:
        obj = {**head, "object": "chat.completion.chunk", "choices": choices}
        if include_usage:
            obj["usage"] = None
        return sse(obj)

    for i in range(submission.n):
        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None}])
    completion_tokens = 0
    async for i, event in submission.events():
        if isinstance(event, Delta):
            yield chunk([{"index": i, "delta": {"content": event.text}, "logprobs": None, "finish_reason": None}])
        else:
            completion_tokens += event.completion_tokens
            yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": event.finish_reason}])
    if include_usage:
        yield sse({**head, "object": "chat.completion.chunk", "choices": [],
                   "usage": usage(prompt_tokens, completion_tokens)})


async def _completion_chunks(submission: Submission, head: dict, echoes: list[str], prompt_tokens: int,
                             include_usage: bool):
    def chunk(i: int, text: str, reason: str | None) -> str:
        obj = {**head, "object": "text_completion",
               "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": reason}]}
        if include_usage:
            obj["usage"] = None
        return sse(obj)

    for i, echo in enumerate(echoes):
        if echo:
            yield chunk(i, echo, None)
    completion_tokens = 0
    async for i, event in submission.events():
        if isinstance(event, Delta):
            yield chunk(i, event.text, None)
        else:
            completion_tokens += event.completion_tokens
            yield chunk(i, "", event.finish_reason)
    if include_usage:
        yield sse({**head, "object": "text_completion", "choices": [],
                   "usage": usage(prompt_tokens, completion_tokens)})
