"""The batching engine and the text streaming it relies on, without HTTP.

The engine is driven step by step (`engine.step()`), so the tests decide exactly when requests
arrive, and compare against `picochat.core.generate.generate`, the reference sampler."""

import math
import queue

import pytest
import torch
from serve_support import ANSWERS, memorizer, prompt_ids

from picochat.core.generate import SamplingConfig, generate
from picochat.core.model import GPT, ModelConfig
from picochat.core.text_stream import IncrementalDecoder, StopStringFilter
from picochat.serve.engine import (
    BatchEngine,
    Delta,
    Finished,
    GenerationRequest,
    QueueFull,
    SamplingParams,
)


class Collector:
    """A request's sink: texts and finish events per answer index."""

    def __init__(self):
        self.events = queue.Queue()

    def __call__(self, event):
        self.events.put(event)

    def drain(self):
        texts, finished = {}, {}
        while not self.events.empty():
            e = self.events.get()
            if isinstance(e, Delta):
                texts[e.index] = texts.get(e.index, "") + e.text
            elif isinstance(e, Finished):
                finished[e.index] = e
            else:
                raise AssertionError(e)
        return texts, finished


def run_until_idle(engine, max_steps=500):
    for _ in range(max_steps):
        engine.step()
        if not engine.rows and not engine._waiting:
            return
    raise AssertionError("engine did not finish")


@pytest.fixture(scope="module")
def mem(world_tokenizer):
    return memorizer(world_tokenizer)


@pytest.fixture(scope="module")
def random_model(world_tokenizer):
    torch.manual_seed(1)
    vocab = int(math.ceil(world_tokenizer.vocab_size / 64) * 64)
    return GPT(ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=64,
                           max_seq_len=64)).eval()


# ---------------------------------------------------------------------------------------------
# text_stream

def test_incremental_decoder_never_splits_a_character(world_tokenizer):
    tok = world_tokenizer
    text = "Hello 你好，猫狗世界 🙂 é."
    ids = tok.encode(text)
    assert len(ids) > len(text) // 2  # several characters take more than one token
    decoder = IncrementalDecoder(tok)
    pieces = [decoder.push(t) for t in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert sum(1 for p in pieces if p == "") >= 2  # pieces were held back mid-character


def test_stop_string_filter_holds_back_and_cuts():
    f = StopStringFilter(["STOP", "\n\n"])
    out = [f.feed("abc S"), f.feed("T"), f.feed("O"), f.feed("x")]
    assert out == [("abc ", False), ("", False), ("", False), ("STOx", False)]  # "STO" released once it can't be STOP
    assert f.feed("yST") == ("y", False)
    assert f.feed("OP and more") == ("", True)
    assert f.feed("later") == ("", True) and f.flush() == ""
    g = StopStringFilter(["\n\n", "zz"])
    assert g.feed("one\n") == ("one", False)
    assert g.flush() == "\n"  # the reply ended otherwise: the held-back tail is released
    h = StopStringFilter(["bb", "ab"])
    assert h.feed("xabb") == ("x", True)  # the earliest stop string wins
    assert StopStringFilter().feed("anything") == ("anything", False)


# ---------------------------------------------------------------------------------------------
# engine

def test_batched_greedy_equals_generate_with_requests_arriving_mid_flight(mem, world_tokenizer):
    tok = world_tokenizer
    engine = BatchEngine(mem, tok, max_batch_rows=8)
    stop_ids = (tok.im_end_id, tok.eot_id)
    prompts = [prompt_ids(tok, q) for q in ("hi", "count", "count", "hi", "What is Hara's favourite food?")]
    arrivals = [0, 0, 3, 10, 17]  # the step at which each request is submitted
    sinks = [Collector() for _ in prompts]
    step = 0
    while step < 400:
        for p, a, sink in zip(prompts, arrivals, sinks):
            if a == step:
                engine.submit(GenerationRequest(p, SamplingParams(max_tokens=50, temperature=0, stop_ids=stop_ids),
                                                sink))
        engine.step()
        step += 1
        if step > max(arrivals) and not engine.rows:
            break
    assert engine.stats["prefills"] == 4  # the two requests of step 0 shared one prefill
    for p, sink in zip(prompts, sinks):
        texts, finished = sink.drain()
        ref = generate(mem, [p], SamplingConfig(max_new_tokens=50, temperature=0, stop_ids=stop_ids),
                       pad_id=tok.pad_id)[0]
        assert texts.get(0, "") == tok.decode(ref.tokens)
        assert finished[0].finish_reason == ref.finish_reason
        assert finished[0].completion_tokens == len(ref.tokens) + (ref.finish_reason == "stop")


def test_memorised_answers_and_compaction(mem, world_tokenizer):
    """Staggered arrivals push the shared frontier past the rows' lengths; compaction must keep
    every answer intact."""
    tok = world_tokenizer
    engine = BatchEngine(mem, tok, max_batch_rows=4)
    stop_ids = (tok.im_end_id, tok.eot_id)
    expected, sinks = [], []
    for i in range(12):
        question = "count" if i % 3 else "hi"
        sink = Collector()
        engine.submit(GenerationRequest(prompt_ids(tok, question),
                                        SamplingParams(max_tokens=60, temperature=0, stop_ids=stop_ids), sink))
        expected.append(ANSWERS[question])
        sinks.append(sink)
        for _ in range(7):
            engine.step()
    run_until_idle(engine)
    assert engine.cache.compactions > 0
    assert [s.drain()[0][0] for s in sinks] == expected


def test_seeded_n_answers_equal_generate(random_model, world_tokenizer):
    tok = world_tokenizer
    prompt = tok.encode("Hara is a")
    engine = BatchEngine(random_model, tok)
    sink = Collector()
    engine.submit(GenerationRequest(prompt, SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=123),
                                    sink, n=3))
    run_until_idle(engine)
    texts, finished = sink.drain()
    ref = generate(random_model, [prompt] * 3, SamplingConfig(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=123))
    assert [texts[i] for i in range(3)] == [tok.decode(r.tokens, skip_special=True) for r in ref]
    assert len(set(texts.values())) > 1  # three different answers, one prefill
    assert all(f.finish_reason == "length" and f.completion_tokens == 12 for f in finished.values())
    assert engine.stats["prefills"] == 1


def test_stop_strings_and_max_tokens(mem, world_tokenizer):
    tok = world_tokenizer
    engine = BatchEngine(mem, tok)
    stop_ids = (tok.im_end_id, tok.eot_id)
    a, b, c = Collector(), Collector(), Collector()
    engine.submit(GenerationRequest(prompt_ids(tok, "hi"),
                                    SamplingParams(max_tokens=60, temperature=0, stop=("dog", "zebra"),
                                                   stop_ids=stop_ids), a))
    engine.submit(GenerationRequest(prompt_ids(tok, "count"),
                                    SamplingParams(max_tokens=5, temperature=0, stop_ids=stop_ids), b))
    engine.submit(GenerationRequest(prompt_ids(tok, "count"),
                                    SamplingParams(max_tokens=60, temperature=0, stop=("twelve",),
                                                   stop_ids=stop_ids), c))
    run_until_idle(engine)
    text = a.drain()[0][0]
    assert ANSWERS["hi"].startswith(text) and text.endswith("The ") and "dog" not in text
    texts, finished = b.drain()
    assert finished[0].finish_reason == "length" and finished[0].completion_tokens == 5
    assert ANSWERS["count"].startswith(texts[0]) and len(texts[0]) < len(ANSWERS["count"])
    texts, finished = c.drain()
    assert texts[0] == ANSWERS["count"][: -len("twelve")] and finished[0].finish_reason == "stop"


def test_cancel_queue_full_and_no_batching(mem, world_tokenizer):
    tok = world_tokenizer
    engine = BatchEngine(mem, tok, max_queue=2, batching=False)
    params = SamplingParams(max_tokens=40, temperature=0, stop_ids=(tok.im_end_id,))
    first, second, third = Collector(), Collector(), Collector()
    r1 = GenerationRequest(prompt_ids(tok, "count"), params, first)
    engine.submit(r1)
    engine.submit(GenerationRequest(prompt_ids(tok, "hi"), params, second))
    with pytest.raises(QueueFull):
        engine.submit(GenerationRequest(prompt_ids(tok, "hi"), params, third))
    engine.step()
    engine.step()
    assert len(engine.rows) == 1 and engine.rows[0].request is r1  # no batching: one request at a time
    texts, finished = first.drain()
    assert texts and not finished
    r1.cancel()
    engine.step()  # drops the cancelled request and admits the next one
    assert len(engine.rows) == 1 and engine.rows[0].request is not r1
    run_until_idle(engine)
    assert first.drain() == ({}, {})  # nothing more for the cancelled request
    assert second.drain()[0][0] == ANSWERS["hi"]
    with pytest.raises(ValueError, match="context"):
        engine.submit(GenerationRequest(prompt_ids(tok, "hi"), SamplingParams(max_tokens=500), third))
