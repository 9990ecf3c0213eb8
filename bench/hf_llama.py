"""The transformers twin of a picochat GPT: same config, same weights, checked to give the same logits.

picochat's parameter names are HF Llama's (see picochat/core/model.py), so copying the weights is a
`load_state_dict` with nothing renamed; what needs care is the config mapping.
"""

from __future__ import annotations

import torch

from picochat.core.model import GPT, ModelConfig


def llama_config(cfg: ModelConfig, **extra):
    """`transformers.LlamaConfig` with the same architecture as picochat's `ModelConfig`."""
    import transformers

    return transformers.LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_seq_len,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        **extra,
    )


def hf_twin(model: GPT, **config_extra):
    """A `transformers.LlamaForCausalLM` holding a copy of `model`'s weights (fp32, SDPA attention)."""
    import transformers

    if model.cfg.head != "lm":
        raise ValueError("hf_twin needs an LM-head model (head='lm')")
    hf_cfg = llama_config(model.cfg, **config_extra)
    hf_cfg._attn_implementation = "sdpa"  # what LlamaForCausalLM picks by default on torch >= 2.1
    hf = transformers.LlamaForCausalLM(hf_cfg)
    hf.load_state_dict(model.state_dict(), strict=True)
    return hf.to(next(model.parameters()).device)


def hf_scalar_twin(model: GPT, pad_token_id: int):
    """A `transformers.LlamaForSequenceClassification` (num_labels=1) holding a copy of a
    scalar-head picochat model (a reward or value model): `score` is the same Linear in both."""
    import transformers

    if model.cfg.head != "scalar":
        raise ValueError("hf_scalar_twin needs a scalar-head model (a reward model)")
    hf_cfg = llama_config(model.cfg, num_labels=1, pad_token_id=pad_token_id)
    hf_cfg._attn_implementation = "sdpa"
    hf = transformers.LlamaForSequenceClassification(hf_cfg)
    hf.load_state_dict(model.state_dict(), strict=True)
    return hf.to(next(model.parameters()).device)


@torch.no_grad()
def max_logit_difference(model: GPT, hf, input_ids: torch.Tensor) -> float:
    """Largest |picochat logit − transformers logit| over a batch, in fp32."""
    return (model(input_ids).float() - hf(input_ids).logits.float()).abs().max().item()


def check_same_logits(model: GPT, hf, input_ids: torch.Tensor, atol: float = 1e-4) -> float:
    """Raise unless both models give the same fp32 logits on `input_ids`; return the max difference."""
    diff = max_logit_difference(model, hf, input_ids)
    if not diff <= atol:
        raise AssertionError(
            f"picochat and transformers logits differ by {diff:.2e} (> {atol:g}) on the same weights: "
            "the config mapping in bench/hf_llama.py is wrong, so the timings would not compare like with like"
        )
    return diff
