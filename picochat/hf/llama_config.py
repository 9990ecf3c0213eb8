"""picochat's ModelConfig <-> a Hugging Face Llama `config.json`, and what cannot be imported.

The two architectures are the same function, checked against transformers' `modeling_llama`:
- RoPE: HF Llama rotates halves (`rotate_half`, frequencies laid out [f0..f_{d/2-1}, f0..]), as
  picochat does, so q/k weights need no permutation (Meta's original release interleaves pairs;
  HF's conversion script permutes them into the half layout, which is what HF checkpoints hold).
- RMSNorm: `weight * x / sqrt(mean(x^2) + eps)` in fp32, weight initialised to 1 (not Gemma's
  `1 + weight`); picochat's `norm_eps` is HF's `rms_norm_eps`.
- Attention: scores scaled by head_dim ** -0.5, GQA by repeating each kv head over
  n_heads / n_kv_heads query heads, no biases, no dropout.
- MLP: `down_proj(silu(gate_proj(x)) * up_proj(x))`, the same three names.
- Heads: `lm_head` (optionally tied to `embed_tokens`), or `score` with one row for
  `LlamaForSequenceClassification` (a reward model).
Parameter names are HF's already, so weights move across unchanged.

Anything outside that (biases, scaled or partial RoPE, sliding windows, other activations or
model types, quantised weights) would silently compute something else, so the import refuses it.
"""

from __future__ import annotations

from picochat.core.model import ModelConfig

CAUSAL_LM = "LlamaForCausalLM"
SEQUENCE_CLASSIFICATION = "LlamaForSequenceClassification"

# HF LlamaConfig defaults for keys a config.json may leave out (transformers 4.x and 5.x agree).
LLAMA_DEFAULTS = {
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "attention_dropout": 0.0,
}


class UnsupportedModelError(ValueError):
    """An HF checkpoint picochat cannot represent exactly; the message says which field and why."""


def llama_config_dict(cfg: ModelConfig, *, bos_token_id: int, eos_token_id: int | list[int], pad_token_id: int,
                      dtype: str) -> dict:
    """The `config.json` of `cfg` as a Llama: LlamaForCausalLM for head "lm",
    LlamaForSequenceClassification with one label for head "scalar"."""
    scalar = cfg.head == "scalar"
    d = {
        "architectures": [SEQUENCE_CLASSIFICATION if scalar else CAUSAL_LM],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        # transformers < 5 and most converters (llama.cpp, vLLM) read rope_theta; 5.x reads
        # rope_parameters (and would build it from rope_theta if it were missing).
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": bool(cfg.tie_embeddings and not scalar),
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,  # LlamaForSequenceClassification pools at the last non-pad token
        "torch_dtype": dtype,  # transformers < 5
        "dtype": dtype,  # transformers >= 5
    }
    if scalar:
        d["id2label"] = {"0": "reward"}
        d["label2id"] = {"reward": 0}
        d["problem_type"] = "regression"
    return d


def _rope_theta(hf: dict, where: str) -> float:
    """rope_theta from either config style, refusing any RoPE variant other than the plain one."""
    scaling = hf.get("rope_scaling")
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else scaling
        if kind not in (None, "default"):
            raise UnsupportedModelError(
                f"{where}: rope_scaling = {scaling!r}; picochat implements plain RoPE only "
                f"(no {kind} scaling). Use a checkpoint without rope_scaling.")
    theta = hf.get("rope_theta")
    params = hf.get("rope_parameters")
    if params:
        per_layer = isinstance(params, dict) and "rope_type" not in params \
            and all(isinstance(v, dict) for v in params.values())
        if not isinstance(params, dict) or per_layer:
            raise UnsupportedModelError(f"{where}: per-layer rope_parameters {params!r} are not supported")
        kind = params.get("rope_type", params.get("type", "default"))
        if kind != "default":
            raise UnsupportedModelError(
                f"{where}: rope_parameters.rope_type = {kind!r}; picochat implements plain RoPE only "
                "(rope_type 'default')")
        extra = sorted(set(params) - {"rope_type", "type", "rope_theta"})
        if extra and not (extra == ["partial_rotary_factor"] and params["partial_rotary_factor"] == 1):
            raise UnsupportedModelError(
                f"{where}: rope_parameters has {extra}, which picochat's RoPE does not implement")
        theta = params.get("rope_theta", theta)
    if hf.get("partial_rotary_factor", 1) != 1:
        raise UnsupportedModelError(f"{where}: partial_rotary_factor = {hf['partial_rotary_factor']}; "
                                    "picochat rotates every channel of each head")
    return float(theta if theta is not None else LLAMA_DEFAULTS["rope_theta"])


def model_config_from_llama(hf: dict, where: str = "config.json") -> ModelConfig:
    """ModelConfig of an HF Llama config.json (as a dict); `where` names the file in errors.

    Raises UnsupportedModelError for anything picochat's GPT would compute differently.
    """
    model_type = hf.get("model_type")
    if model_type != "llama":
        raise UnsupportedModelError(
            f"{where}: model_type is {model_type!r}; picochat imports Llama-architecture checkpoints only "
            "(model_type 'llama', e.g. SmolLM, TinyLlama, Llama 2). Other families differ in details the "
            "import would get silently wrong (biases, norms, sliding windows, ...)")
    architectures = hf.get("architectures") or [CAUSAL_LM]
    unknown = [a for a in architectures if a not in (CAUSAL_LM, SEQUENCE_CLASSIFICATION)]
    if unknown or len(architectures) != 1:
        raise UnsupportedModelError(
            f"{where}: architectures {architectures}; picochat imports {CAUSAL_LM} or "
            f"{SEQUENCE_CLASSIFICATION} (a reward model with one label)")
    head = "scalar" if architectures[0] == SEQUENCE_CLASSIFICATION else "lm"
    if head == "scalar":
        n_labels = len(hf["id2label"]) if hf.get("id2label") else hf.get("num_labels", 2)
        if n_labels != 1:
            raise UnsupportedModelError(
                f"{where}: a {SEQUENCE_CLASSIFICATION} with {n_labels} labels; a reward model has one (num_labels=1)")

    def get(key):
        return hf.get(key, LLAMA_DEFAULTS.get(key))

    for key in ("attention_bias", "mlp_bias"):
        if get(key):
            raise UnsupportedModelError(f"{where}: {key} = true; picochat's linear layers have no biases")
    act = hf.get("hidden_act", hf.get("hidden_activation", "silu"))
    if act != "silu":
        raise UnsupportedModelError(f"{where}: hidden_act = {act!r}; picochat's MLP is SwiGLU (silu)")
    if hf.get("sliding_window") or hf.get("use_sliding_window"):
        raise UnsupportedModelError(
            f"{where}: sliding_window = {hf.get('sliding_window')!r}; picochat attends over the whole context")
    if hf.get("quantization_config"):
        method = hf["quantization_config"].get("quant_method", "?")
        raise UnsupportedModelError(f"{where}: quantised weights ({method}); import the unquantised checkpoint")
    if get("attention_dropout"):
        raise UnsupportedModelError(f"{where}: attention_dropout = {hf['attention_dropout']}; picochat has no dropout")
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if k not in hf]
    if missing:
        raise UnsupportedModelError(f"{where}: missing {missing}; is this a Llama config.json?")
    hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim")
    if head_dim is not None and heads * head_dim != hidden:
        raise UnsupportedModelError(
            f"{where}: head_dim = {head_dim} but hidden_size / num_attention_heads = {hidden} / {heads}; "
            "picochat's heads split hidden_size evenly")
    # pretraining_tp > 1 only splits the matmuls into slices in transformers 4.x: the same function.
    cfg = ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=hidden,
        n_layers=hf["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads,
        ffn_hidden=hf["intermediate_size"],
        max_seq_len=get("max_position_embeddings"),
        rope_theta=_rope_theta(hf, where),
        norm_eps=float(get("rms_norm_eps")),
        tie_embeddings=bool(get("tie_word_embeddings")),
        head=head,
        init_std=float(get("initializer_range")),
    )
    try:
        cfg.validate()
    except ValueError as e:
        raise UnsupportedModelError(f"{where}: {e}") from None
    return cfg
