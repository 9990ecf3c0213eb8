"""Model tests: shapes, parameter bookkeeping, causality, KV-cache equivalence, HF parity."""

import pytest
import torch

from picochat.core.model import GPT, KVCache, ModelConfig, lm_loss


def tiny_config(**overrides) -> ModelConfig:
    kw = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, ffn_hidden=64, max_seq_len=32)
    kw.update(overrides)
    return ModelConfig(**kw)


def tiny_model(seed=0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_config(**overrides))


def test_forward_shapes_lm_and_scalar():
    ids = torch.randint(0, 64, (3, 10))
    assert tiny_model()(ids).shape == (3, 10, 64)
    assert tiny_model(head="scalar")(ids).shape == (3, 10)


def test_gqa_forward_and_kv_proj_shapes():
    model = tiny_model(n_heads=4, n_kv_heads=2)
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (2 * 8, 32)
    out = model(torch.randint(0, 64, (2, 7)))
    assert out.shape == (2, 7, 64) and torch.isfinite(out).all()


def test_parameter_names_match_hf_llama():
    names = set(tiny_model().state_dict())
    for n in [
        "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
        "model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
        "model.layers.1.self_attn.v_proj.weight", "model.layers.1.self_attn.o_proj.weight",
        "model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight",
        "model.layers.1.mlp.down_proj.weight", "model.layers.1.input_layernorm.weight",
        "model.layers.1.post_attention_layernorm.weight",
    ]:
        assert n in names
    assert not any("bias" in n or "rope" in n for n in names)


def test_num_params_by_hand():
    c = tiny_config()
    per_layer = 4 * c.d_model * c.d_model + 3 * c.d_model * c.ffn_hidden + 2 * c.d_model
    body = c.n_layers * per_layer + c.d_model  # + final norm
    emb = c.vocab_size * c.d_model
    model = GPT(c)
    assert model.num_params() == body + 2 * emb
    assert model.num_params(exclude_embeddings=True) == body + emb
    tied = GPT(tiny_config(tie_embeddings=True))
    assert tied.num_params() == body + emb
    assert tied.num_params(exclude_embeddings=True) == body
    # flops: 6 * matmul weights (layers + head) + attention term
    matmul = c.n_layers * (4 * c.d_model**2 + 3 * c.d_model * c.ffn_hidden) + emb
    assert model.flops_per_token(16) == 6 * matmul + 12 * c.n_layers * c.d_model * 16
    assert tied.flops_per_token(16) == model.flops_per_token(16)


def test_tied_embeddings_share_storage():
    model = tiny_model(tie_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_init_residual_projections_scaled_down():
    model = GPT(tiny_config(n_layers=8, d_model=64, ffn_hidden=256, init_std=0.02))
    layer = model.model.layers[0]
    assert abs(layer.self_attn.q_proj.weight.std().item() - 0.02) < 0.003
    assert abs(layer.self_attn.o_proj.weight.std().item() - 0.02 / 4) < 0.001
    assert abs(layer.mlp.down_proj.weight.std().item() - 0.02 / 4) < 0.001
    assert torch.all(layer.input_layernorm.weight == 1)


def test_config_round_trip_and_errors():
    c = tiny_config(n_kv_heads=2, tie_embeddings=True, head="scalar")
    assert ModelConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="n_layer"):
        ModelConfig.from_dict({**c.to_dict(), "n_layer": 3})
    with pytest.raises(ValueError, match="divisible by n_heads"):
        tiny_config(d_model=30).validate()
    with pytest.raises(ValueError, match="n_kv_heads"):
        tiny_config(n_kv_heads=3).validate()
    with pytest.raises(ValueError, match="head must be"):
        tiny_config(head="value").validate()
    with pytest.raises(ValueError, match="vocab_size"):
        tiny_config(vocab_size=0).validate()


def test_causality():
    model = tiny_model()
    ids = torch.randint(0, 64, (2, 12))
    changed = ids.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 64
    a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_kv_cache_incremental_equals_full(n_kv_heads):
    model = tiny_model(n_kv_heads=n_kv_heads)
    ids = torch.randint(0, 64, (2, 14))
    full = model(ids)
    cache = KVCache(model.cfg, batch_size=2, max_len=14)
    parts = [model(ids[:, :5], kv_cache=cache)]  # prefill
    parts.append(model(ids[:, 5:8], kv_cache=cache))  # a multi-token chunk after a cache
    for t in range(8, 14):
        parts.append(model(ids[:, t : t + 1], kv_cache=cache))
    assert cache.length == 14
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)
    cache.reset()
    assert cache.length == 0


def test_left_padding_matches_unpadded():
    model = tiny_model()
    short = torch.randint(1, 64, (1, 5))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), short], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    out = model(padded, attention_mask=mask)  # positions derived from the mask
    assert torch.isfinite(out).all()  # pad queries attend to themselves, no NaN
    torch.testing.assert_close(out[:, 3:], model(short), atol=1e-5, rtol=0)


def test_scalar_head_swap():
    model = tiny_model()
    trunk = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("model.")}
    model.set_head("scalar")
    assert model.cfg.head == "scalar" and not hasattr(model, "lm_head")
    assert model.score.weight.shape == (1, 32)
    assert model(torch.randint(0, 64, (2, 5))).shape == (2, 5)
    for k, v in trunk.items():
        assert torch.equal(model.state_dict()[k], v)
    assert GPT(model.cfg).state_dict().keys() == model.state_dict().keys()
    model.set_head("lm")
    assert model(torch.randint(0, 64, (2, 5))).shape == (2, 5, 64)


def test_rope_tables_stay_fp32_after_cast():
    model = tiny_model().to(torch.bfloat16)
    assert model.rope_cos.dtype == torch.float32
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model(torch.randint(0, 64, (1, 4))).dtype == torch.bfloat16


def test_lm_loss():
    logits = torch.zeros(2, 3, 5)
    targets = torch.tensor([[0, 1, -100], [2, -100, -100]])
    torch.testing.assert_close(lm_loss(logits, targets), torch.log(torch.tensor(5.0)))
    assert lm_loss(logits, torch.full((2, 3), -100)).item() == 0.0
    logits = torch.randn(2, 3, 5)
    targets = torch.randint(0, 5, (2, 3))
    torch.testing.assert_close(lm_loss(logits, targets),
                               torch.nn.functional.cross_entropy(logits.view(-1, 5), targets.view(-1)))


def test_matches_hf_llama():
    transformers = pytest.importorskip("transformers")
    for overrides in [dict(n_kv_heads=2), dict(tie_embeddings=True)]:
        model = tiny_model(**overrides)
        c = model.cfg
        hf_cfg = transformers.LlamaConfig(
            vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.ffn_hidden,
            num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
            max_position_embeddings=c.max_seq_len, rope_theta=c.rope_theta, rms_norm_eps=c.norm_eps,
            tie_word_embeddings=c.tie_embeddings, attention_bias=False, mlp_bias=False,
        )
        hf = transformers.LlamaForCausalLM(hf_cfg).eval()
        hf.load_state_dict(model.state_dict(), strict=True)
        ids = torch.randint(0, 64, (2, 10))
        with torch.no_grad():
            torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-4, rtol=0)
