"""A compiled one-token decode step over a static KV cache: `generate(..., compiled=True)`.

At batch 1 the tiny preset's decode step is about 230 small ops (six blocks of norms, matmuls,
RoPE, attention, SwiGLU, residual adds), and eager PyTorch spends most of each op in dispatch, not
arithmetic (bench/README.md: where a batch-1 decode goes). Inductor fuses the elementwise work into
a few C++ loops, and its C++ wrapper calls them and the matmuls with no Python in between.

Eager decoding attends over the slots written so far, a new shape every step, which a compiled
graph would recompile for. Here every step has the same shapes: each layer's keys and values span
the whole generation (B, Hkv, width, D), the new token's key/value is written at a slot given as a
tensor, and a (B, width) mask says which slots it may see (written, not padding, its own). The
slots not yet written are zeros, not uninitialised memory: masked scores are dropped, but a NaN in
garbage memory would still poison the softmax.

The step computes what `GPT.forward` computes for one new token (tests/test_decode_step.py checks
the logits); the numbers may differ in the last bits, because inductor orders some sums otherwise.
It is used for fp32 parameters (with or without autocast); the prefill stays eager.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from picochat.core.model import GPT, KVCache, apply_rope, stacked_weight


class StaticCache:
    """Per-layer keys and values of a whole generation, copied from the prefill's `KVCache`.

    Separate tensors per layer, not views of one buffer: a compiled graph that writes into views
    of one input copies the whole input back every call (measured: 7x slower than eager at batch
    16), where it writes a separate input in place."""

    def __init__(self, prefill: KVCache, visible: torch.Tensor):
        n_layers, _, batch, n_kv_heads, width, head_dim = prefill.shape
        written = prefill.length
        self.keys, self.values = [], []
        for layer in range(n_layers):
            for store, part in ((self.keys, 0), (self.values, 1)):
                t = prefill.kv.new_zeros((batch, n_kv_heads, width, head_dim))
                t[:, :, :written] = prefill.kv[layer, part, :, :, :written]
                store.append(t)
        self.visible = visible.clone()  # (B, width) bool: slots a new token may attend to
        self.visible[:, written:] = False

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep these batch rows, in this order (as `KVCache.keep_rows`)."""
        self.keys = [t.index_select(0, rows) for t in self.keys]
        self.values = [t.index_select(0, rows) for t in self.values]
        self.visible = self.visible.index_select(0, rows)


def decode_logits(ids, positions, slot, visible, keys, values, embed, rope_cos, rope_sin, layers, final_norm,
                  lm_head, n_heads: int, eps: float) -> torch.Tensor:
    """One new token per row -> its logits (B, V); writes its keys/values into `keys`/`values`.

    ids, positions (B, 1) long; slot (1,) long: the cache slot this token fills; visible (B, width)
    bool, this token's slot included; keys/values: per layer (B, Hkv, width, D); layers: per layer
    (input norm weight, stacked q/k/v weight, o weight, post-attention norm weight, stacked
    gate/up weight, down weight), the stacks already in the compute dtype."""
    B = ids.shape[0]
    x = F.embedding(ids, embed)  # (B, 1, C), the fp32 residual stream
    n_kv_heads, head_dim = keys[0].shape[1], keys[0].shape[3]
    dtype = layers[0][1].dtype  # what q and k are in (the autocast dtype under autocast)
    cos = rope_cos[positions][:, None].to(dtype)  # (B, 1, 1, D)
    sin = rope_sin[positions][:, None].to(dtype)
    for i, (w_norm1, w_qkv, w_o, w_norm2, w_gate_up, w_down) in enumerate(layers):
        h = F.rms_norm(x, (x.shape[-1],), w_norm1, eps)
        qkv = F.linear(h, w_qkv).view(B, 1, n_heads + 2 * n_kv_heads, head_dim).transpose(1, 2)
        qk, v = qkv.split([n_heads + n_kv_heads, n_kv_heads], dim=1)
        q, k = apply_rope(qk, cos, sin).split([n_heads, n_kv_heads], dim=1)
        keys[i].index_copy_(2, slot, k.to(keys[i].dtype))
        values[i].index_copy_(2, slot, v.to(values[i].dtype))
        k_all, v_all = keys[i].to(q.dtype), values[i].to(q.dtype)
        if n_kv_heads != n_heads:
            k_all = k_all.repeat_interleave(n_heads // n_kv_heads, dim=1)
            v_all = v_all.repeat_interleave(n_heads // n_kv_heads, dim=1)
        # Attention of one query, written out: inductor fuses it into one loop over the cache, where
        # SDPA's CPU kernel or two batched matmuls cost more at one query (bench/README.md). A
        # masked slot's score is -inf, so its weight is exactly 0.
        scores = (q * k_all).sum(-1) * head_dim ** -0.5  # (B, H, width)
        attn = scores.masked_fill(~visible[:, None, :], float("-inf")).softmax(-1)
        y = (attn[..., None] * v_all).sum(-2, keepdim=True)  # (B, H, 1, D)
        x = x + F.linear(y.transpose(1, 2).reshape(B, 1, -1), w_o)
        gate, up = F.linear(F.rms_norm(x, (x.shape[-1],), w_norm2, eps), w_gate_up).chunk(2, dim=-1)
        x = x + F.linear(F.silu(gate) * up, w_down)
    return F.linear(F.rms_norm(x, (x.shape[-1],), final_norm, eps), lm_head)[:, -1]


def can_compile_decode(model: GPT) -> bool:
    """The compiled step assumes fp32 parameters (the residual stream and norms in fp32, as
    `RMSNorm` computes them) and the LM head."""
    return model.cfg.head == "lm" and all(p.dtype == torch.float32 for p in model.parameters())


class CompiledDecoder:
    """Runs `decode_logits` through `torch.compile` for one model's `generate` calls.

    torch.compile keeps the graphs it built (per batch size and cache width; after a second size
    it compiles one graph for any), so one decoder serves a whole chat. If compiling fails (no C++
    compiler on this machine), it says so once and decodes eagerly with the same function."""

    _compiled = None  # one per process: graphs are cached by the inputs' shapes, not by decoder
    _failed: str | None = None

    def __init__(self, model: GPT):
        if not can_compile_decode(model):
            raise ValueError("the compiled decode step needs a language model with fp32 parameters")
        self.model = model

    def weights(self, cache: KVCache) -> tuple:
        """The step's weights, stacked and cast once per `generate` call (the cache keeps them)."""
        layers = []
        for block in self.model.model.layers:
            attn, mlp = block.self_attn, block.mlp
            layers.append((block.input_layernorm.weight,
                           stacked_weight((attn.q_proj, attn.k_proj, attn.v_proj), cache),
                           stacked_weight((attn.o_proj,), cache),
                           block.post_attention_layernorm.weight,
                           stacked_weight((mlp.gate_proj, mlp.up_proj), cache),
                           stacked_weight((mlp.down_proj,), cache)))
        return (self.model.model.embed_tokens.weight, self.model.rope_cos, self.model.rope_sin, layers,
                self.model.model.norm.weight, stacked_weight((self.model.lm_head,), cache))

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, slot: int, cache: StaticCache,
                 weights: tuple) -> torch.Tensor:
        """Logits (B, V) of one new token per row, written at `slot` of `cache`."""
        cache.visible[:, slot] = True
        args = (ids, positions, torch.tensor([slot], device=ids.device), cache.visible, cache.keys, cache.values,
                *weights, self.model.cfg.n_heads, self.model.cfg.norm_eps)
        cls = type(self)
        if cls._failed is None:
            if cls._compiled is None:
                # the C++ wrapper: the step's kernels are called from C++, not from a Python wrapper
                cls._compiled = torch.compile(decode_logits, options={"cpp_wrapper": True})
            try:
                return cls._compiled(*args)
            except Exception as e:  # noqa: BLE001 - a compiler failure; the eager call below tells a bad input apart
                failure = e
            logits = decode_logits(*args)
            cls._failed = str(failure).strip().splitlines()[0][:300] if str(failure).strip() else type(failure).__name__
            warnings.warn(f"torch.compile of the decode step failed ({type(failure).__name__}: {cls._failed}); "
                          "decoding uncompiled", stacklevel=2)
            return logits
        return decode_logits(*args)
