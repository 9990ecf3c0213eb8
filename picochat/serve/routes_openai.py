"""OpenAI's API: the models, chat completions and text completions (API key required, if set).

    GET  /v1/models               the served model
    POST /v1/chat/completions     chat (streaming SSE or not), n, stop, seed, usage
    POST /v1/completions          raw text continuation (documents start after <|endoftext|>)

Routes only translate: they validate, render the prompt with the chat template (user text is
never parsed as special tokens), submit a `GenerationRequest` to the `BatchEngine` and turn its
events into OpenAI's JSON (bridge.py carries requests and events between the event loop and the
engine thread).
"""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request

from picochat.serve.bridge import Submission, collect_or_cancel, sse, stream_response
from picochat.serve.dependencies import AUTH, ServiceDep
from picochat.serve.engine import Delta, SamplingParams
from picochat.serve.errors import APIError
from picochat.serve.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields, chat_messages
from picochat.serve.service import Service

router = APIRouter(dependencies=AUTH)


@router.get("/v1/models")
async def list_models(service: ServiceDep):
    return {"object": "list", "data": [_model_card(service)]}


@router.get("/v1/models/{name}")
async def get_model(name: str, service: ServiceDep):
    check_model(service, name)
    return _model_card(service)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, service: ServiceDep):
    """The assistant's answer(s) to a conversation: one JSON object, or chunks as they are sampled."""
    prompt = chat_prompt(service, body)
    tok = service.tokenizer
    params = sampling_params(service, body, len(prompt), body.requested_max_tokens(), (tok.im_end_id, tok.eot_id))
    submission = Submission(service, [prompt], body.n, params)
    head = response_head(service, "chatcmpl")
    if body.stream:
        return stream_response(_chat_chunks(submission, head, len(prompt), wants_usage(body)), submission)
    texts, reasons, tokens = await collect_or_cancel(submission, request)
    return {**head, "object": "chat.completion",
            "choices": [{"index": i, "message": {"role": "assistant", "content": t, "refusal": None},
                         "logprobs": None, "finish_reason": r}
                        for i, (t, r) in enumerate(zip(texts, reasons))],
            "usage": usage(len(prompt), sum(tokens))}


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, service: ServiceDep):
    """Continuations of one or more raw-text prompts (n each): one JSON object, or chunks."""
    texts, prompts = completion_prompts(service, body)
    tok = service.tokenizer
    params = sampling_params(service, body, max(len(p) for p in prompts), body.max_tokens, (tok.eot_id,))
    submission = Submission(service, prompts, body.n, params)
    prompt_tokens = sum(len(p) for p in prompts)
    head = response_head(service, "cmpl")
    echoes = [texts[i // body.n] if body.echo else "" for i in range(len(prompts) * body.n)]
    if body.stream:
        chunks = _completion_chunks(submission, head, echoes, prompt_tokens, wants_usage(body))
        return stream_response(chunks, submission)
    outs, reasons, tokens = await collect_or_cancel(submission, request)
    return {**head, "object": "text_completion",
            "choices": [{"index": i, "text": e + t, "logprobs": None, "finish_reason": r}
                        for i, (e, t, r) in enumerate(zip(echoes, outs, reasons))],
            "usage": usage(prompt_tokens, sum(tokens))}


# ---------------------------------------------------------------------------------------------
# Request -> prompt ids and sampling parameters


def check_model(service: Service, name: str | None) -> None:
    if name is not None and name != service.model_name:
        raise APIError(404, f"the model {name!r} does not exist; this server serves {service.model_name!r} "
                       "(see GET /v1/models)", param="model", code="model_not_found")


def chat_prompt(service: Service, body: ChatCompletionRequest) -> list[int]:
    """The prompt ids of a chat request, after checking its model, its messages and their size."""
    check_model(service, body.model)
    messages = chat_messages(body.messages)
    limits = service.limits
    limits.check_texts([m["content"] for m in messages], "messages", limits.max_messages, "messages")
    return service.prompt_ids(messages)


def completion_prompts(service: Service, body: CompletionRequest) -> tuple[list[str], list[list[int]]]:
    """(texts, prompt ids) of a completion request, after checking its model and its size."""
    check_model(service, body.model)
    texts = body.prompts()
    service.limits.check_texts(texts, "prompts", service.limits.max_prompts, "prompt")
    tok = service.tokenizer
    # Documents start after <|endoftext|> in pretraining, so a continuation starts there too.
    return texts, [[tok.eot_id] + tok.encode(t) for t in texts]


def sampling_params(service: Service, body: SamplingFields, prompt_tokens: int, requested_max_tokens: int | None,
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


# ---------------------------------------------------------------------------------------------
# Answers -> OpenAI's JSON


def response_head(service: Service, prefix: str) -> dict:
    """The fields every response object (and every chunk of a stream) starts with."""
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": service.model_name,
            "system_fingerprint": service.fingerprint()}


def wants_usage(body: SamplingFields) -> bool:
    """Whether a stream ends with a usage chunk (stream_options.include_usage)."""
    return bool(body.stream_options and body.stream_options.include_usage)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


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
