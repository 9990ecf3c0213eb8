"""Sampling and generation tests: greedy equivalences, filtering, seeds, stop ids."""

import pytest
import torch

from picochat.core.generate import SamplingConfig, generate, sample_logits
from picochat.core.model import GPT, ModelConfig

PROMPTS = [[5, 9, 3, 17, 2, 40, 8], [11, 4], [33, 1, 60, 12]]


def tiny_model(seed=0, **overrides) -> GPT:
    torch.manual_seed(seed)
    kw = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=32)
    kw.update(overrides)
    return GPT(ModelConfig(**kw))


def test_sample_logits_greedy_paths():
    torch.manual_seed(0)
    logits = torch.randn(8, 50)
    argmax = logits.argmax(-1)
    assert torch.equal(sample_logits(logits, temperature=0.0), argmax)
    assert torch.equal(sample_logits(logits, temperature=1.0, top_k=1), argmax)
    assert torch.equal(sample_logits(logits, temperature=1.0, top_p=1e-6), argmax)


def test_sample_logits_seeded_reproducible():
    logits = torch.randn(4, 50)
    a = [sample_logits(logits, 1.0, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(a[0], a[1])


def test_sample_logits_frequencies_follow_softmax():
    probs = torch.tensor([0.6, 0.3, 0.1])
    logits = probs.log().expand(20000, 3)
    gen = torch.Generator().manual_seed(0)
    counts = torch.bincount(sample_logits(logits, 1.0, generator=gen), minlength=3).float() / 20000
    torch.testing.assert_close(counts, probs, atol=0.02, rtol=0)
    # temperature 0.5 squares the odds: p ∝ p_i^2
    sharp = probs**2 / (probs**2).sum()
    counts = torch.bincount(sample_logits(logits, 0.5, generator=gen), minlength=3).float() / 20000
    torch.testing.assert_close(counts, sharp, atol=0.02, rtol=0)


def test_top_k_and_top_p_filter_the_right_tokens():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().expand(4000, 4)
    gen = torch.Generator().manual_seed(0)
    assert set(sample_logits(logits, 1.0, top_k=2, generator=gen).tolist()) == {0, 1}
    # cumulative 0.5, 0.8, 0.95: top_p=0.8 keeps {0, 1}; top_p=0.81 keeps {0, 1, 2}
    assert set(sample_logits(logits, 1.0, top_p=0.8, generator=gen).tolist()) == {0, 1}
    assert set(sample_logits(logits, 1.0, top_p=0.81, generator=gen).tolist()) == {0, 1, 2}


def test_greedy_cache_equals_no_cache_batched():
    model = tiny_model()
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.0)
    cached = generate(model, PROMPTS, cfg, use_cache=True)
    uncached = generate(model, PROMPTS, cfg, use_cache=False)
    assert [r.tokens for r in cached] == [r.tokens for r in uncached]
    assert all(len(r.tokens) == 12 and r.finish_reason == "length" for r in cached)


def test_left_padded_batch_equals_each_prompt_alone():
    model = tiny_model()
    cfg = SamplingConfig(max_new_tokens=10, temperature=0.0)
    batched = generate(model, PROMPTS, cfg)
    for prompt, result in zip(PROMPTS, batched):
        assert generate(model, [prompt], cfg)[0].tokens == result.tokens


def test_seeded_sampling_reproducible():
    model = tiny_model()
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0, top_k=20, top_p=0.9, seed=123)
    a = generate(model, PROMPTS, cfg)
    torch.manual_seed(999)  # global RNG must not matter
    b = generate(model, PROMPTS, cfg)
    assert [r.tokens for r in a] == [r.tokens for r in b]


def test_stop_ids_finish_rows_and_on_token_streams():
    model = tiny_model()
    greedy = generate(model, PROMPTS, SamplingConfig(max_new_tokens=8, temperature=0.0))
    stop = greedy[0].tokens[2]  # row 0 will stop at (the first occurrence of) this token
    streamed = []
    results = generate(
        model, PROMPTS, SamplingConfig(max_new_tokens=8, temperature=0.0, stop_ids=(stop,)),
        on_token=lambda row, tok: streamed.append((row, tok)),
    )
    for full, res in zip(greedy, results):
        if stop in full.tokens:
            assert res.finish_reason == "stop" and res.tokens == full.tokens[: full.tokens.index(stop)]
        else:
            assert res.finish_reason == "length" and res.tokens == full.tokens
    assert results[0].finish_reason == "stop"
    for row, res in enumerate(results):
        assert [t for r, t in streamed if r == row] == res.tokens


def test_finished_rows_are_dropped_without_changing_the_other_rows(monkeypatch):
    from collections import Counter

    from picochat.core.model import KVCache

    model = tiny_model()
    prompts = [[(3 * i) % 60 + 1] * (1 + i % 5) + [i + 3] for i in range(12)]  # left-padded, lengths 2..6
    full = generate(model, prompts, SamplingConfig(max_new_tokens=16, temperature=0.0))
    # A stop token that ends several rows, at different steps, so that the batch is compacted.
    stop = Counter(t for r in full for t in set(r.tokens[:8])).most_common(1)[0][0]
    kept = []
    keep_rows = KVCache.keep_rows
    monkeypatch.setattr(KVCache, "keep_rows", lambda self, rows: (kept.append(len(rows)), keep_rows(self, rows)))
    streamed = []
    results = generate(model, prompts, SamplingConfig(max_new_tokens=16, temperature=0.0, stop_ids=(stop,)),
                       on_token=lambda row, tok: streamed.append((row, tok)))
    assert kept and kept[0] < len(prompts)  # rows were dropped mid-generation
    for row, (res, ref) in enumerate(zip(results, full)):
        expected = ref.tokens[: ref.tokens.index(stop)] if stop in ref.tokens else ref.tokens
        assert res.tokens == expected and res.finish_reason == ("stop" if stop in ref.tokens else "length")
        assert [t for r, t in streamed if r == row] == res.tokens  # streamed under the prompt's own row


def test_all_rows_stop_ends_early():
    model = tiny_model()
    first = generate(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=1, temperature=0.0))[0].tokens[0]
    res = generate(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=20, temperature=0.0, stop_ids=(first,)))
    assert res[0].tokens == [] and res[0].finish_reason == "stop"


def test_too_long_raises():
    model = tiny_model()
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, [[1] * 30], SamplingConfig(max_new_tokens=3))
    generate(model, [[1] * 29], SamplingConfig(max_new_tokens=3))  # exactly fits
    with pytest.raises(ValueError, match="head='lm'"):
        generate(tiny_model(head="scalar"), [[1]], SamplingConfig())


def test_a_repeated_prompt_is_prefilled_once_and_its_rows_sample_as_before(monkeypatch):
    """K answers to one prompt: the prompt's forward runs once and its keys/values are copied to
    its K rows. The rows then sample what rows prefilled one by one sample (the uncached path,
    which recomputes every row from its tokens at every step)."""
    from picochat.core import generate as generate_module

    model = tiny_model()
    prompts = [PROMPTS[0]] * 3 + [PROMPTS[1]] * 2 + [PROMPTS[2]]
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0, seed=5)
    prefilled_rows = []
    forward = GPT.forward
    monkeypatch.setattr(GPT, "forward", lambda self, ids, **kw: prefilled_rows.append(ids.shape) or forward(
        self, ids, **kw))
    shared = generate(model, prompts, cfg)
    assert prefilled_rows[0] == (3, 7)  # the 3 distinct prompts, left-padded to the longest
    assert all(shape[1] == 1 for shape in prefilled_rows[1:])  # then one token per row and step
    assert [r.tokens for r in shared] == [r.tokens for r in generate(model, prompts, cfg, use_cache=False)]
    assert len({tuple(r.tokens) for r in shared[:3]}) > 1  # the copies sample on their own
    # the shared prefill's logits and cache are those of prefilling every row
    ids = torch.tensor([PROMPTS[0]] * 2)
    with torch.no_grad():
        logits, cache = generate_module._prefill(model, [PROMPTS[0]] * 2, ids, torch.arange(7)[None].expand(2, 7),
                                                  None, 12)
        full = generate_module.KVCache(model.cfg, 2, 12)
        expected = model(ids, kv_cache=full)[:, -1]
    assert torch.equal(logits, expected)
    assert torch.equal(cache.kv[..., :7, :], full.kv[..., :7, :])


def test_one_prompt_decodes_in_fp32_under_bf16_autocast_on_cpu(monkeypatch):
    """At one row oneDNN's bf16 matmul costs about twice fp32's, so a single prompt is decoded in
    fp32 on a CPU even under bf16 autocast: the fp32 answer. A batch keeps the autocast dtype."""
    model = tiny_model()
    cfg = SamplingConfig(max_new_tokens=12, temperature=1.0, seed=3)
    dtypes = []
    forward = GPT.forward
    monkeypatch.setattr(GPT, "forward", lambda self, ids, **kw: dtypes.append(
        torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32) or forward(
        self, ids, **kw))
    fp32 = generate(model, [PROMPTS[0]], cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        single = generate(model, [PROMPTS[0]], cfg)
        assert set(dtypes) == {torch.float32}
        dtypes.clear()
        generate(model, PROMPTS[:2], cfg)
    assert single[0].tokens == fp32[0].tokens
    assert set(dtypes) == {torch.bfloat16}
