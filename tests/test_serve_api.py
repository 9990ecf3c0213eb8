"""The OpenAI-compatible API, through the official `openai` client, against a live uvicorn server on
127.0.0.1. The model is a tiny GPT that has learned two answers by heart, so greedy answers are
known exactly (including Chinese characters that take several tokens each)."""

import io
import json
import math
import threading
import time
from argparse import Namespace

import pytest
import torch

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_support import ANSWERS, LiveServer, memorizer, prompt_ids  # noqa: E402

from picochat.cli.chat import cmd_chat  # noqa: E402
from picochat.core.model import GPT, ModelConfig  # noqa: E402
from picochat.reward_model import RewardModel  # noqa: E402
from picochat.serve.api import create_app  # noqa: E402
from picochat.serve.engine import BatchEngine  # noqa: E402
from picochat.serve.limits import ServeLimits  # noqa: E402
from picochat.serve.service import Service  # noqa: E402

KEY = "sk-test-key"
MODEL = "picochat-test"
LIMITS = ServeLimits(max_body_bytes=20_000, max_chars=2_000, max_messages=8, max_n=4)


@pytest.fixture(scope="module")
def reward_model(world_tokenizer):
    torch.manual_seed(2)
    vocab = int(math.ceil(world_tokenizer.vocab_size / 64) * 64)
    model = GPT(ModelConfig(vocab_size=vocab, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, ffn_hidden=64,
                            max_seq_len=128, head="scalar")).eval()
    return RewardModel(model, world_tokenizer, gain=2.0, bias=0.5)


@pytest.fixture(scope="module")
def server(world_tokenizer, reward_model):
    engine = BatchEngine(memorizer(world_tokenizer), world_tokenizer, max_batch_rows=8, threads=1).start()
    service = Service(engine=engine, tokenizer=world_tokenizer, model_name=MODEL, limits=LIMITS, api_key=KEY,
                      reward_model=reward_model, reward_name="picochat-rm-test")
    live = LiveServer(create_app(service))
    live.service = service
    yield live
    live.stop()
    engine.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=30)


def ask(question):
    return [{"role": "user", "content": question}]


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    health = httpx.get(server.url + "/health").json()  # no key needed
    assert health["status"] == "ok" and health["auth_required"] and health["context"] == 128


def test_non_streaming_answer_and_usage(client, world_tokenizer):
    r = client.chat.completions.create(model=MODEL, messages=ask("hi"), temperature=0)
    assert r.object == "chat.completion" and r.model == MODEL
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == ANSWERS["hi"]
    assert choice.finish_reason == "stop"
    answer_tokens = len(world_tokenizer.encode(ANSWERS["hi"]))
    assert r.usage.prompt_tokens == len(prompt_ids(world_tokenizer, "hi"))
    assert r.usage.completion_tokens == answer_tokens + 1  # + <|im_end|>
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_is_utf8_safe(client):
    stream = client.chat.completions.create(model=MODEL, messages=ask("hi"), temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    pieces, reasons, usage = [], [], None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                reasons.append(c.finish_reason)
    assert "".join(pieces) == ANSWERS["hi"]
    assert len(pieces) > 10  # streamed token by token, not in one piece
    assert all("\ufffd" not in p for p in pieces)  # 猫 and 狗 are several tokens each, never split
    assert any(ch in p for p in pieces for ch in "猫狗")
    assert reasons == ["stop"] and usage.completion_tokens > 10


def test_n_answers_with_seed_are_reproducible(client):
    kwargs = dict(model=MODEL, messages=ask("count"), temperature=1.5, top_p=1.0, n=3, seed=7, max_tokens=12)
    first = client.chat.completions.create(**kwargs)
    second = client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]
    stream = client.chat.completions.create(model=MODEL, messages=ask("hi"), temperature=0, n=2, stream=True)
    texts = {0: "", 1: ""}
    done = set()
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                done.add(c.index)
    assert texts == {0: ANSWERS["hi"], 1: ANSWERS["hi"]} and done == {0, 1}


def test_stop_sequences_and_length(client):
    r = client.chat.completions.create(model=MODEL, messages=ask("hi"), temperature=0, stop=["dog", "zzz"])
    assert r.choices[0].message.content == ANSWERS["hi"][: ANSWERS["hi"].index("dog")]
    assert r.choices[0].finish_reason == "stop"
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL, messages=ask("hi"), temperature=0, stop="dog", stream=True) if c.choices]
    assert "".join(pieces) == r.choices[0].message.content  # no part of "dog" leaked into a chunk
    r = client.chat.completions.create(model=MODEL, messages=ask("count"), temperature=0, max_completion_tokens=4)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4
    assert ANSWERS["count"].startswith(r.choices[0].message.content)


def test_completions_endpoint(client):
    r = client.completions.create(model=MODEL, prompt="one two", max_tokens=5, temperature=0, echo=True)
    assert r.object == "text_completion" and r.choices[0].text.startswith("one two")
    assert r.choices[0].finish_reason in ("length", "stop") and r.usage.completion_tokens <= 5
    r = client.completions.create(model=MODEL, prompt=["a", "b"], max_tokens=3, n=2, temperature=1.0)
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]


def test_score_uses_the_reward_model(server, reward_model):
    body = {"messages": ask("What is 2 + 3?"), "responses": ["5.", "It is 5.", "No."]}
    r = httpx.post(server.url + "/v1/score", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    expected = reward_model.score([ask("What is 2 + 3?")] * 3, body["responses"])
    assert r.json()["scores"] == pytest.approx(expected, abs=1e-5)


def test_errors_have_openai_shape_and_server_stays_up(client, server):
    def expect(error_type, status, **kwargs):
        with pytest.raises(error_type) as info:
            client.chat.completions.create(**{"model": MODEL, "messages": ask("hi"), **kwargs})
        assert info.value.status_code == status
        body = info.value.response.json()
        assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
        return body["error"]

    # Parameter errors are 400, as OpenAI answers them (its client raises BadRequestError).
    assert expect(openai.BadRequestError, 400, temperature=3)["param"] == "temperature"
    assert expect(openai.BadRequestError, 400, n=50)["param"] == "n"
    assert expect(openai.BadRequestError, 400, top_p=0)["param"] == "top_p"
    assert expect(openai.BadRequestError, 400, max_tokens=0)["param"] == "max_tokens"
    assert expect(openai.BadRequestError, 400, stop=["a", "b", "c", "d", "e"])["param"] == "stop"
    assert expect(openai.BadRequestError, 400, logprobs=True)["param"] == "logprobs"
    assert expect(openai.BadRequestError, 400, messages=[{"role": "assistant", "content": "hi"}])["param"] == "messages"
    assert expect(openai.BadRequestError, 400, messages=[{"role": "robot", "content": "hi"}])
    assert expect(openai.BadRequestError, 400, max_tokens=1000)["code"] == "context_length_exceeded"
    assert expect(openai.BadRequestError, 400, messages=ask("x" * 3000))["code"] == "request_too_large"
    assert expect(openai.BadRequestError, 400, messages=ask("hi") * 9)["code"] == "request_too_large"
    assert expect(openai.NotFoundError, 404, model="gpt-4")["code"] == "model_not_found"
    bad_key = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.chat.completions.create(model=MODEL, messages=ask("hi"))
    raw = server.url + "/v1/chat/completions"
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    assert httpx.post(raw, json={"model": MODEL, "messages": ask("hi")}).status_code == 401  # no key
    r = httpx.post(raw, content=b'{"model": "picochat-test", "messages": [', headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert httpx.post(raw, content=b"[1, 2]", headers=auth).status_code == 400
    assert httpx.post(raw, content=b"\xff\xfe garbage", headers=auth).status_code == 400
    huge = json.dumps({"model": MODEL, "messages": ask("y" * 30_000)}).encode()
    r = httpx.post(raw, content=huge, headers=auth)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert httpx.get(server.url + "/v1/nothing", headers=auth).status_code == 404
    # ... and it still answers.
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    r = client.chat.completions.create(model=MODEL, messages=ask("hi"), temperature=0)
    assert r.choices[0].message.content == ANSWERS["hi"]


def test_chat_cli_talks_to_the_server(server):
    args = Namespace(ckpt=None, url=server.url, api_key=KEY, model=None, system=None, temperature=0.0, top_k=0,
                     top_p=1.0, max_new_tokens=60, seed=None)
    stdout = io.StringIO()
    assert cmd_chat(args, stdin=io.StringIO("hi\n/reset\ncount\n"), stdout=stdout) == 0
    out = stdout.getvalue()
    assert f"bot> {ANSWERS['hi']}\n" in out and f"bot> {ANSWERS['count']}\n" in out
    assert f"model {MODEL}" in out


def test_queue_full_is_429_and_disconnect_cancels(world_tokenizer):
    """An engine that never runs (not started) keeps requests waiting: the second is turned away
    with 429, and a client that hangs up gets its request cancelled."""
    engine = BatchEngine(memorizer(world_tokenizer), world_tokenizer, max_queue=1)
    live = LiveServer(create_app(Service(engine=engine, tokenizer=world_tokenizer, model_name=MODEL)))
    try:
        url = live.url + "/v1/chat/completions"
        body = {"model": MODEL, "messages": ask("hi"), "stream": True}
        with httpx.stream("POST", url, json=body, timeout=10) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # kept: a collected iterator would close the connection
            first = next(lines)
            assert json.loads(first[len("data: "):])["choices"][0]["delta"]["role"] == "assistant"
            waiting = engine._waiting[0]
            assert not waiting.cancelled
            second = httpx.post(url, json={**body, "stream": False}, timeout=10)
            assert second.status_code == 429 and second.json()["error"]["type"] == "rate_limit_error"
            assert second.headers["retry-after"] == "1"
        deadline = time.time() + 5  # the stream was closed: the server notices and cancels
        while not waiting.cancelled and time.time() < deadline:
            time.sleep(0.05)
        assert waiting.cancelled
        engine._waiting.clear()
        result = {}

        def hang_up():  # a non-streaming client that gives up after 2 s
            try:
                httpx.post(url, json={**body, "stream": False}, timeout=2.0)
            except httpx.TimeoutException:
                result["timed_out"] = True

        t = threading.Thread(target=hang_up)
        t.start()
        t.join()
        assert result == {"timed_out": True}
        deadline = time.time() + 10
        while not (engine._waiting and engine._waiting[0].cancelled) and time.time() < deadline:
            time.sleep(0.05)
        assert engine._waiting[0].cancelled
    finally:
        live.stop()
