"""The compiled decode step over a static cache computes what the model computes for one token."""

import warnings

import pytest
import torch

from picochat.core import decode_step
from picochat.core.decode_step import CompiledDecoder, StaticCache, decode_logits
from picochat.core.generate import SamplingConfig, generate
from picochat.core.model import GPT, KVCache, ModelConfig

PROMPTS = [[5, 9, 3, 17, 2, 40, 8], [11, 4], [33, 1, 60, 12]]


def tiny_model(seed=0, **overrides) -> GPT:
    torch.manual_seed(seed)
    kw = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=32)
    kw.update(overrides)
    return GPT(ModelConfig(**kw)).eval()


def left_padded(prompts, width):
    longest = max(map(len, prompts))
    ids = torch.zeros((len(prompts), longest), dtype=torch.long)
    mask = torch.ones((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, longest - len(p):] = torch.tensor(p)
        mask[row, :longest - len(p)] = 0
    return ids, mask


@pytest.mark.parametrize("n_kv_heads", [2, 4])
def test_the_step_gives_the_models_logits_and_cache(n_kv_heads):
    """Eagerly, three decode steps after a left-padded prefill: the model's logits, and the same
    keys/values in the written slots."""
    model = tiny_model(n_kv_heads=n_kv_heads)
    width = 12
    ids, mask = left_padded(PROMPTS, width)
    longest = ids.shape[1]
    positions = (mask[:, :longest].cumsum(-1) - 1).clamp(min=0)
    reference, prefill = KVCache(model.cfg, 3, width), KVCache(model.cfg, 3, width, pack_weights=True)
    with torch.inference_mode():
        model(ids, position_ids=positions, attention_mask=mask[:, :longest], kv_cache=reference)
        model(ids, position_ids=positions, attention_mask=mask[:, :longest], kv_cache=prefill)
        weights = CompiledDecoder(model).weights(prefill)
        static = StaticCache(prefill, mask.bool())
        next_ids, next_positions = torch.tensor([[7], [8], [9]]), positions[:, -1:]
        for step in range(3):
            next_positions = next_positions + 1
            slot = longest + step
            expected = model(next_ids, position_ids=next_positions, attention_mask=mask[:, :slot + 1],
                             kv_cache=reference)[:, -1]
            static.visible[:, slot] = True
            got = decode_logits(next_ids, next_positions, torch.tensor([slot]), static.visible, static.keys,
                                static.values, *weights, model.cfg.n_heads, model.cfg.norm_eps)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
            next_ids = got.argmax(-1, keepdim=True)
    written = longest + 3
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(static.keys[layer][..., :written, :], reference.kv[layer, 0, ..., :written, :])
        torch.testing.assert_close(static.values[layer][..., :written, :], reference.kv[layer, 1, ..., :written, :])
        assert not static.keys[layer][..., written:, :].any()  # zeros, never uninitialised memory


def test_compiled_generate_gives_the_eager_tokens_and_drops_finished_rows(monkeypatch):
    """torch.compile for real (a C++ compiler is on the CI machine), a padded batch with stop ids so
    that rows finish and the batch is compacted, then a batch of one: the eager tokens."""
    model = tiny_model()
    greedy = SamplingConfig(max_new_tokens=16, temperature=0.0)
    eager = generate(model, PROMPTS, greedy)
    stop = eager[1].tokens[3]  # row 1 stops at its 4th token, so the batch is compacted then
    stopping = SamplingConfig(max_new_tokens=16, temperature=0.0, stop_ids=(stop,))
    monkeypatch.setattr(CompiledDecoder, "_failed", None)
    compiled = generate(model, PROMPTS, greedy, compiled=True)
    compiled_stopping = generate(model, PROMPTS, stopping, compiled=True)
    compiled_one = generate(model, PROMPTS[:1], greedy, compiled=True)
    assert CompiledDecoder._failed is None  # compiled, not decoded eagerly after a failed compile
    assert [r.tokens for r in compiled] == [r.tokens for r in eager]
    assert [(r.tokens, r.finish_reason) for r in compiled_stopping] == \
        [(r.tokens, r.finish_reason) for r in generate(model, PROMPTS, stopping)]
    assert compiled_stopping[1].finish_reason == "stop"
    assert compiled_one[0].tokens == eager[0].tokens


def test_a_failed_compile_warns_once_and_decodes_eagerly(monkeypatch):
    def broken_compile(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler found")
        return call

    monkeypatch.setattr(decode_step.torch, "compile", broken_compile)
    monkeypatch.setattr(CompiledDecoder, "_compiled", None)
    monkeypatch.setattr(CompiledDecoder, "_failed", None)
    model = tiny_model()
    greedy = SamplingConfig(max_new_tokens=6, temperature=0.0)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler found"):
        got = generate(model, PROMPTS, greedy, compiled=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # said once
        again = generate(model, PROMPTS, greedy, compiled=True)
    expected = [r.tokens for r in generate(model, PROMPTS, greedy)]
    assert [r.tokens for r in got] == expected == [r.tokens for r in again]


def test_models_that_are_not_fp32_decode_eagerly():
    model = tiny_model().to(torch.bfloat16)
    assert not decode_step.can_compile_decode(model)
    with pytest.raises(ValueError, match="fp32"):
        CompiledDecoder(model)
    greedy = SamplingConfig(max_new_tokens=4, temperature=0.0)
    assert [r.tokens for r in generate(model, PROMPTS, greedy, compiled=True)] == \
        [r.tokens for r in generate(model, PROMPTS, greedy)]
