"""What a reliability/security probe found in the server (issue 16), each pinned by a test:

- the labeling queue survives an over-long prompt (typed, in the prompt file, or in a pending file
  left by an older version), and its pending state is capped;
- only the server's own host names are answered and browser writes from other origins refused
  (DNS rebinding, cross-site requests); the HTML pages send CSP, X-Frame-Options and nosniff;
- malformed requests are 400 in OpenAI's error shape, with the parameter named, and types are
  strict (no "8" for 8, no true for 1); a chunked body over the limit is 413.
"""

import json
import logging

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_support import labeling_server  # noqa: E402

from picochat.serve.labeling import LabelStore  # noqa: E402
from picochat.serve.limits import ServeLimits  # noqa: E402

MODEL = "picochat-test"
LIMITS = ServeLimits(max_body_bytes=20_000, max_chars=4_000)
LONG = "word " * 300  # fits max_chars, but not the model's 128-token context
PROMPTS = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "count"}]]


@pytest.fixture(scope="module")
def server(world_tokenizer, tmp_path_factory):
    """No API key (the default), labeling on: what a user starts with `picochat serve --ckpt DIR`."""
    out = tmp_path_factory.mktemp("labels") / "human.jsonl"
    with labeling_server(world_tokenizer, out, PROMPTS, model_name=MODEL, limits=LIMITS) as live:
        yield live


def chat_body(**extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, **extra}


def error_of(r, status: int) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


# ---- 2. the labeling queue and over-long prompts ------------------------------------------------


def test_overlong_typed_prompt_is_refused_and_not_stored(server):
    r = httpx.post(server.url + "/label/api/prompt", json={"text": LONG}, timeout=30)
    assert error_of(r, 400)["code"] == "context_length_exceeded"
    r = httpx.get(server.url + "/label/api/next", timeout=30)  # the queue goes on
    assert r.status_code == 200 and r.json()["item"]["prompt"] == PROMPTS[0]
    assert r.json()["progress"]["total"] == len(PROMPTS)
    state = server.out.with_name(server.out.name + ".pending.json")
    assert "word word" not in state.read_text(encoding="utf-8")


def test_overlong_prompt_in_the_prompt_file_is_skipped_with_a_warning(tmp_path, world_tokenizer, caplog):
    from picochat.serve.labeling import context_check, read_label_prompts

    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p}) for p in ["hi", LONG, "count"]) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        prompts = read_label_prompts(path, check=context_check(world_tokenizer, 128))
    assert prompts == PROMPTS  # the prompt after the long one is still served
    assert f"{path}, line 2" in caplog.text and "128-token context" in caplog.text


def test_pending_file_of_an_older_version_with_an_overlong_prompt_does_not_block(tmp_path, world_tokenizer,
                                                                                  caplog):
    from picochat.serve.labeling import context_check

    out = tmp_path / "human.jsonl"
    long_prompt = [{"role": "user", "content": LONG}]
    state = out.with_name(out.name + ".pending.json")
    # What the older version left: the typed prompt stored before its length was checked.
    state.write_text(json.dumps({"pending": {"p1": {"id": "p1", "prompt": long_prompt, "responses": ["a", "b", "c"],
                                                    "finished": [True] * 3}},
                                 "typed": {"t1": long_prompt}}), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        store = LabelStore(out, PROMPTS, k=3, check=context_check(world_tokenizer, 128))
    assert store.next_prompt()[1] == PROMPTS[0]
    assert store.progress() == {"labeled": 0, "total": 2}
    assert str(state) in caplog.text and "dropped" in caplog.text
    assert "word word" not in state.read_text(encoding="utf-8")  # dropped from the file too


def test_typed_prompts_waiting_to_be_ranked_are_capped(tmp_path):
    from picochat.serve.labeling import MAX_WAITING

    store = LabelStore(tmp_path / "human.jsonl", PROMPTS, k=2)
    for i in range(MAX_WAITING + 10):
        typed = [{"role": "user", "content": f"prompt {i}"}]
        pid = store.add_typed(typed)
        store.set_answers(pid, typed, ["a", "b"], [True, True], {})
    state = json.loads(store.state_file.read_text(encoding="utf-8"))
    assert len(state["typed"]) == MAX_WAITING and len(state["pending"]) <= MAX_WAITING
    assert store.next_prompt()[1] == [{"role": "user", "content": f"prompt {MAX_WAITING + 9}"}]  # newest kept
    assert store.progress()["total"] == len(PROMPTS) + MAX_WAITING


# ---- 3. host names, origins, page headers --------------------------------------------------------


def test_only_the_servers_own_host_names_are_answered(server):
    port = server.port
    for host in ["evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", "localhost.evil"]:
        r = httpx.get(server.url + "/health", headers={"Host": host})
        assert error_of(r, 400)["code"] == "host_not_allowed"
        r = httpx.post(server.url + "/v1/chat/completions", json=chat_body(), headers={"Host": host})
        assert error_of(r, 400)["code"] == "host_not_allowed"
    for host in [f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LocalHost"]:
        assert httpx.get(server.url + "/health", headers={"Host": host}).status_code == 200


def test_cross_origin_writes_are_refused(server):
    for origin in ["http://evil.example", f"http://evil.example:{server.port}", "null"]:
        r = httpx.post(server.url + "/v1/chat/completions", json=chat_body(), headers={"Origin": origin})
        assert error_of(r, 403)["code"] == "origin_not_allowed"
        r = httpx.post(server.url + "/label/api/submit", json={"id": "x", "ranking": [0, 1, 2]},
                       headers={"Origin": origin})
        assert error_of(r, 403)["code"] == "origin_not_allowed"
    for origin in [server.url, f"http://localhost:{server.port}"]:  # the server's own pages
        r = httpx.post(server.url + "/v1/chat/completions", json=chat_body(), headers={"Origin": origin}, timeout=30)
        assert r.status_code == 200
    assert httpx.post(server.url + "/v1/chat/completions", json=chat_body(), timeout=30).status_code == 200  # no Origin


def test_html_pages_send_security_headers(server):
    for path in ["/", "/label"]:
        r = httpx.get(server.url + path)
        assert r.status_code == 200
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp
        assert "script-src 'sha256-" in csp and "connect-src 'self'" in csp
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"


def test_host_policy_for_each_way_of_binding():
    from picochat.serve.hosts import HostPolicy, host_policy

    loopback = HostPolicy()
    assert loopback.allows_host("localhost:8000") and loopback.allows_host("[::1]:8000")
    assert not loopback.allows_host("evil.example:8000") and not loopback.allows_host("")
    assert loopback.allows_origin("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert not loopback.allows_origin("https://evil.example", "127.0.0.1:8000")

    proxied = host_policy("127.0.0.1", ["Chat.Example.com:443"], api_key_set=True)
    assert proxied.allows_host("chat.example.com") and proxied.allows_origin("https://chat.example.com", "x")
    assert host_policy("192.168.1.20", [], api_key_set=False).allows_host("192.168.1.20:8000")
    assert not host_policy("192.168.1.20", [], api_key_set=False).allows_host("evil.example")
    # 0.0.0.0 with a key: any Host (the key keeps other sites out), origins must match the Host.
    any_host = host_policy("0.0.0.0", [], api_key_set=True)
    assert any_host.allows_host("mybox.lan:8000") and any_host.allows_origin("http://mybox.lan:8000", "mybox.lan:8000")
    assert not any_host.allows_origin("http://evil.example", "mybox.lan:8000")
    with pytest.raises(ValueError, match="--allowed-hosts"):  # 0.0.0.0, no key, no list: refused
        host_policy("0.0.0.0", [], api_key_set=False)
    assert host_policy("::", ["mybox.lan"], api_key_set=False).allows_host("mybox.lan")


# ---- 4. and 5. validation: 400 in OpenAI's shape, strict types ---------------------------------


def test_completions_with_an_empty_prompt_list_is_400_and_the_connection_survives(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post("/v1/completions", json={"model": MODEL, "prompt": []})
        assert error_of(r, 400)["param"] == "prompt"
        ok = client.post("/v1/completions", json={"model": MODEL, "prompt": "one", "max_tokens": 1})
        assert ok.status_code == 200


@pytest.mark.parametrize("field, value", [
    ("logprobs", True), ("top_logprobs", 2), ("logit_bias", {"50": 10}), ("presence_penalty", 0.5),
    ("tools", [{"type": "function", "function": {"name": "f"}}]), ("response_format", {"type": "json_object"}),
    ("max_tokens", "8"), ("stream", "yes"), ("n", True), ("seed", 1.5), ("temperature", "0.5"),
])
def test_unsupported_or_wrongly_typed_fields_are_400_naming_the_param(server, field, value):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       extra_body={field: value})
    error = info.value.response.json()["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error"


def test_empty_unsupported_fields_and_null_user_content(server):
    r = httpx.post(server.url + "/v1/chat/completions", json=chat_body(logit_bias={}, top_logprobs=None), timeout=30)
    assert r.status_code == 200
    r = httpx.post(server.url + "/v1/chat/completions",
                   json=chat_body(messages=[{"role": "user", "content": None}]))
    assert error_of(r, 400)["param"] == "messages"
    r = httpx.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": "a", "suffix": "b"})
    assert error_of(r, 400)["param"] == "suffix"


def test_chunked_body_over_the_limit_is_413(server):
    def chunks():
        piece = b'{"model": "picochat-test", "messages": [{"role": "user", "content": "' + b"y" * 5_000
        yield piece
        for _ in range(5):
            yield b"y" * 5_000
        yield b'"}]}'

    r = httpx.post(server.url + "/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert error_of(r, 413)["code"] == "request_too_large"


def test_rankings_are_strict_and_the_first_submission_wins(server):
    item = httpx.get(server.url + "/label/api/next", timeout=60).json()["item"]
    submit = server.url + "/label/api/submit"
    for bad in [[True, False, 2], ["0", "1", "2"], [0.0, 1, 2], [0, 0, 1], [0, 1], [[0, 1], "2"]]:
        r = httpx.post(submit, json={"id": item["id"], "ranking": bad})
        assert error_of(r, 400)["param"] == "ranking", bad
    r = httpx.post(submit, json={"id": item["id"], "ranking": [2, [0, 1]], "labeler": "ann"})
    assert r.status_code == 200
    r = httpx.post(submit, json={"id": item["id"], "ranking": ["garbage"]})  # validated like the first
    assert error_of(r, 400)["param"] == "ranking"
    r = httpx.post(submit, json={"id": item["id"], "ranking": [0, 1, 2]})
    assert error_of(r, 409)["param"] == "id"
    lines = server.out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["ranking"] == [2, [0, 1]]
