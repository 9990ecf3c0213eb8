"""The web pages in a real browser: Debian's Chromium, headless, driven by Playwright.

The chat page must stream an answer into the page; the labeling page must turn clicks and drags
into a ranking in the preference JSONL that the reward-model loader reads, and a reload must
neither lose nor duplicate work. Both run under their Content-Security-Policy: every test fails on
a CSP violation the browser reports."""

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("browser tests need Debian's chromium at /usr/bin/chromium (apt-get install chromium; "
                ".ci/run installs it)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("fastapi")

from serve_support import ANSWERS, labeling_server  # noqa: E402

from picochat.data.preferences import read_preferences  # noqa: E402
from picochat.train.reward import EncodedRecord, load_preference_splits  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 20_000
sync_api.expect.set_options(timeout=TIMEOUT_MS)  # a loaded 2-core CI machine is slow


@pytest.fixture(scope="module")
def site(world_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("labels") / "human.jsonl"
    prompts = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "count"}]]
    with labeling_server(world_tokenizer, out, prompts, model_name="picochat-test") as live:
        yield live


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("console", lambda m: page.errors.append(m.text) if "Content Security Policy" in m.text else None)
    yield page
    assert page.errors == []
    context.close()


def test_pages_send_security_headers_and_work_under_them(site, page):
    for path, styled, ran in [("/", "header", "#model"), ("/label", ".buttons", "#progress")]:
        response = page.goto(site.url + path)
        headers = response.headers
        assert "default-src 'none'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
        # The inline <style> applied (flex layout) and the inline <script> ran (it fetched /health).
        assert page.locator(styled).evaluate("e => getComputedStyle(e).display") == "flex"
        sync_api.expect(page.locator(ran)).not_to_have_text("…" if path == "/label" else "connecting…")


def test_chat_page_streams_an_answer(site, page):
    page.goto(site.url + "/")
    sync_api.expect(page.locator("#model")).to_contain_text("picochat-test")
    page.click("#settings summary")
    page.fill("#temperature", "0")
    # Record every text the answer bubble was given while it arrived: streaming shows partial answers.
    # Each mutation record keeps the text node of its moment, so this holds even when all chunks
    # arrive in one network read and the observer runs once.
    page.evaluate("""() => { window.seen = [];
        new MutationObserver(records => {
            for (const r of records) {
                if (!r.target.closest || !r.target.closest('.msg.assistant')) continue;
                for (const n of r.addedNodes) if (n.nodeType === Node.TEXT_NODE) window.seen.push(n.data);
            }
        }).observe(document.getElementById('messages'), {subtree: true, childList: true}); }""")
    page.fill("#input", "hi")
    page.press("#input", "Enter")
    answer = page.locator('.msg.assistant[data-done="1"]')
    sync_api.expect(answer).to_have_count(1)
    assert answer.inner_text() == ANSWERS["hi"]  # 你好，猫狗世界 arrives whole, never as broken bytes
    partial = [t for t in page.evaluate("window.seen") if t and t != ANSWERS["hi"]]
    assert partial and all(ANSWERS["hi"].startswith(t) for t in partial)
    assert page.locator(".msg.user").inner_text() == "hi"
    assert not page.locator("#send").is_disabled() and page.locator("#stop").is_disabled()

    page.fill("#input", "你好")  # Chinese input goes through as typed
    page.press("#input", "Enter")
    sync_api.expect(page.locator('.msg.assistant[data-done="1"]')).to_have_count(2)
    second = page.locator(".msg.user").nth(1).inner_text()
    assert second.startswith("你好\n")  # the 128-token context holds no two turns: the first was dropped
    assert "forgot the oldest 1 turn" in second
    assert page.locator(".msg.error").count() == 0
    page.click("#new-chat")
    sync_api.expect(page.locator(".msg")).to_have_count(0)


def ranked_order(page):
    return [int(i) for i in page.locator("#ranking li").evaluate_all("els => els.map(e => e.dataset.index)")]


def test_label_page_writes_rankings_the_reward_model_reads(site, page, world_tokenizer):
    page.goto(site.url + "/label")
    sync_api.expect(page.locator(".answer")).to_have_count(3)
    sync_api.expect(page.locator("#progress")).to_have_text("0 / 2 labeled")
    assert "hi" in page.locator("#prompt").inner_text()
    page.fill("#labeler", "tester")
    for i in (0, 2, 1):  # click from best to worst ...
        page.click(f'.answer[data-index="{i}"]')
    assert ranked_order(page) == [0, 2, 1]
    page.locator("#ranking li").nth(1).locator(".up").click()  # ... move one up ...
    assert ranked_order(page) == [2, 0, 1]
    page.locator("#ranking li").nth(2).locator(".tie").check()  # ... and tie the last two
    page.click("#submit")
    sync_api.expect(page.locator("#progress")).to_have_text("1 / 2 labeled")
    sync_api.expect(page.locator("#prompt")).to_contain_text("count")
    answers = page.locator(".answer").all_inner_texts()
    page.click('.answer[data-index="0"]')
    page.click('.answer[data-index="1"]')

    page.reload()  # the same prompt, answers and half-done ranking come back; nothing is written twice
    sync_api.expect(page.locator("#progress")).to_have_text("1 / 2 labeled")
    sync_api.expect(page.locator(".answer")).to_have_count(3)
    assert page.locator(".answer").all_inner_texts() == answers
    assert page.locator("#labeler").input_value() == "tester"
    assert ranked_order(page) == [0, 1]
    page.click('.answer[data-index="2"]')
    page.drag_and_drop("#ranking li:nth-child(1)", "#ranking li:nth-child(3)")  # drag the first to the end
    assert ranked_order(page) == [1, 2, 0]
    page.check("#all-bad")
    page.click("#submit")
    sync_api.expect(page.locator("#progress")).to_have_text("2 / 2 labeled")
    sync_api.expect(page.locator("#prompt")).to_contain_text("All prompts are labeled")

    records, problems = read_preferences(site.out)
    assert problems == [] and len(records) == 2
    first, second = records
    assert first.prompt == [{"role": "user", "content": "hi"}] and first.ranking == [[2], [0, 1]]
    assert first.meta["labeler"] == "tester" and first.meta["all_bad"] is False
    assert second.ranking == [[1], [2], [0]] and second.meta["all_bad"] is True
    assert ["".join(r) for r in [second.responses]] and len(second.responses) == 3
    # What `picochat rm rm.sources=[FILE]` does with the file: split it and encode every pair.
    train, held_out, _ = load_preference_splits(site.out.parent, [str(site.out)], 0, 0.0)
    assert len(train) == 2 and held_out == []
    encoded = EncodedRecord(train[0], world_tokenizer, 128)
    assert sorted(encoded.pairs) == [(2, 0), (2, 1)] and len(encoded.rows) == 3
