"""A Llama-architecture decoder-only transformer, small enough to read in one sitting.

Architecture (the same as Hugging Face `LlamaForCausalLM`):
  token embedding -> n_layers x [RMSNorm -> attention (GQA, RoPE) -> residual,
                                 RMSNorm -> SwiGLU MLP -> residual]
  -> RMSNorm -> lm_head (next-token logits) or score (one scalar per position).
No biases anywhere, no dropout, no absolute position embeddings.

Parameter names match HF Llama exactly (`model.embed_tokens.weight`,
`model.layers.0.self_attn.q_proj.weight`, ..., `model.norm.weight`, `lm_head.weight`), and RoPE
uses HF's `rotate_half` (non-interleaved) layout, so exporting to `transformers` is a renaming of
nothing: `LlamaForCausalLM(config).load_state_dict(gpt.state_dict())` works as is. A scalar head is
named `score`, like `LlamaForSequenceClassification`.

The loss is not inside `forward`: `lm_loss(logits, targets)` is a separate pure function so that
SFT (masked targets), DPO (per-token log-probs) and PPO can each use the logits their own way.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

HEADS = ("lm", "scalar")


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    d_model: int = 192
    n_layers: int = 6
    n_heads: int = 6
    n_kv_heads: int = 6  # grouped-query attention when < n_heads (must divide n_heads)
    ffn_hidden: int = 512  # SwiGLU hidden width
    max_seq_len: int = 256  # RoPE tables are built up to this many positions
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False  # lm_head shares the embedding matrix (ignored for head="scalar")
    head: str = "lm"  # "lm": logits (B, T, V); "scalar": one score per position (B, T)
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        for name in ("rope_theta", "norm_eps", "init_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ModelConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"ModelConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"ModelConfig.n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"RoPE needs an even head dimension, but d_model/n_heads = {self.d_model}/{self.n_heads}"
                f" = {self.head_dim}; change d_model or n_heads"
            )
        if self.head not in HEADS:
            raise ValueError(f"ModelConfig.head must be one of {HEADS}, got {self.head!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown ModelConfig keys: {unknown}; known keys are {sorted(known)}"
            )
        cfg = cls(**d)
        cfg.validate()
        return cfg


# ----------------------------------------------------------------------------- building blocks


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in fp32 and cast back exactly like HF `LlamaRMSNorm`."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype == torch.float32:  # the residual stream, also under autocast
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one fused kernel, same math
        input_dtype = x.dtype
        x = x.to(torch.float32)
        variance = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        return self.weight * x.to(input_dtype)


def rope_tables(cfg: ModelConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (max_seq_len, head_dim) in fp32, laid out as HF Llama does.

    Frequencies are repeated as [f0..f_{d/2-1}, f0..f_{d/2-1}] (not interleaved), which pairs
    channel i with channel i + d/2 in `rotate_half`.
    """
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
    t = torch.arange(cfg.max_seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)  # (S, d/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (S, d)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, D); cos/sin: (B or 1, 1, T, D), already in x's dtype (see GPT.hidden_states)
    return x * cos + rotate_half(x) * sin


def compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype matmuls with `weight` run in: the autocast dtype inside autocast, else its own."""
    if torch.is_autocast_enabled(weight.device.type):
        return torch.get_autocast_dtype(weight.device.type)
    return weight.dtype


def stacked_weight(linears: tuple[nn.Linear, ...], kv_cache: KVCache | None) -> torch.Tensor:
    """One weight matrix for Linears that read the same input, so that one matmul computes them all
    (q/k/v, gate/up): fewer, larger matmuls, and the input is read and cast once instead of per Linear.

    Each Linear keeps its own parameter (HF's names, its own gradient), so in general the stack is
    rebuilt per call, a copy of the weights. While decoding with a `KVCache(pack_weights=True)`
    the weights cannot change, so the cache keeps the stack, already cast to the compute dtype
    (detached: with gradients enabled the stack is rebuilt, so none is ever lost).
    """
    if kv_cache is not None and kv_cache.packed is not None and not torch.is_grad_enabled():
        key = tuple(id(lin) for lin in linears)
        w = kv_cache.packed.get(key)
        if w is None:
            dtype = compute_dtype(linears[0].weight)
            w = kv_cache.packed[key] = torch.cat([lin.weight.detach().to(dtype) for lin in linears])
        return w
    return torch.cat([lin.weight for lin in linears]) if len(linears) > 1 else linears[0].weight


class KVCache:
    """Preallocated keys/values for incremental decoding: (n_layers, 2, B, n_kv_heads, max_len, head_dim).

    During a forward of T new tokens every layer writes its k/v into slots [length, length+T) and
    attends over slots [0, length+T); `GPT.forward` then calls `advance(T)`. Slots are time order,
    so causality is "key slot <= query slot" even for left-padded rows.
    If `device`/`dtype` are None the buffer is allocated on the first write, from the keys'
    device and dtype (so it follows autocast without the caller having to know its dtype).
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device=None, dtype=None,
                 pack_weights: bool = False):
        self.shape = (cfg.n_layers, 2, batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.max_len = max_len
        self.length = 0
        self.kv = None
        # pack_weights: the model's matmul weights are stacked and cast once and kept here (see
        # `stacked_weight`); only valid while they do not change, e.g. during one `generate` call.
        # Caches may share one dict (cache.packed = other.packed), e.g. per-step views of a batch.
        self.packed: dict | None = {} if pack_weights else None
        # Uninitialised, not zeros: a slot is read only once a forward has written it (attention
        # covers slots [0, length + T)), and zeroing a batch's whole cache cost a pass over memory
        # as large as the cache itself (377 MB for the labeling stage's 512 rows).
        if device is not None or dtype is not None:
            self.kv = torch.empty(self.shape, device=device, dtype=dtype or torch.float32)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's k, v (B, Hkv, T, D) for `layer`; return all keys/values so far."""
        if self.kv is None:
            self.kv = torch.empty(self.shape, device=k.device, dtype=k.dtype)
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KVCache is full: {end} positions needed but max_len is {self.max_len}")
        self.kv[layer, 0, :, :, start:end] = k
        self.kv[layer, 1, :, :, start:end] = v
        return self.kv[layer, 0, :, :, :end], self.kv[layer, 1, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (a 1-D index), in this order: rows that finished generating
        stop costing compute. A row may be listed more than once: each copy continues on its own
        (a prompt prefilled once for several answers)."""
        self.shape = (*self.shape[:2], len(rows), *self.shape[3:])
        if self.kv is not None:  # only the slots written so far are worth copying
            kept = torch.empty(self.shape, device=self.kv.device, dtype=self.kv.dtype)
            torch.index_select(self.kv[..., : self.length, :], 2, rows, out=kept[..., : self.length, :])
            self.kv = kept

    def reset(self) -> None:
        self.length = 0


def attention(q, k, v, mask, is_causal) -> torch.Tensor:
    """PyTorch SDPA (flash attention where it can). One exception, for speed: on CPU, when gradients
    will flow through bf16 attention, it runs in fp32. PyTorch's CPU flash-attention backward is
    far slower in bf16 than in fp32 (torch 2.13, q/k/v (16, 6, T, 32), 1 thread, forward + backward:
    T=80 with a padding mask 22 vs 6 ms, T=256 causal 45 vs 35 ms), and the fp32 forward costs
    little more. Inference (no gradients) keeps bf16, whose forward is the faster one."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.requires_grad:
        with torch.autocast("cpu", enabled=False):  # CPU autocast would cast q, k, v back to bf16
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=is_causal)
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, mask, is_causal, kv_cache):
        B, T, _ = x.shape
        H, Hkv = self.n_heads, self.n_kv_heads
        w_qkv = stacked_weight((self.q_proj, self.k_proj, self.v_proj), kv_cache)  # ((H + 2Hkv) * D, C)
        qkv = F.linear(x, w_qkv).view(B, T, H + 2 * Hkv, self.head_dim).transpose(1, 2)  # (B, H+2Hkv, T, D)
        # split, not slicing: its backward writes the pieces' gradients into one tensor, where each
        # slice's backward would fill a whole zero tensor of qkv's size
        qk, v = qkv.split([H + Hkv, Hkv], dim=1)
        q, k = apply_rope(qk, cos, sin).split([H, Hkv], dim=1)  # queries and keys rotated in one go
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, Hkv, Tk, D)
            k, v = k.to(q.dtype), v.to(q.dtype)
        if Hkv != H:  # GQA: each kv head serves n_heads/n_kv_heads query heads (HF repeat_kv)
            k = k.repeat_interleave(H // Hkv, dim=1)
            v = v.repeat_interleave(H // Hkv, dim=1)
        y = attention(q, k, v, mask, is_causal)  # (B, H, T, D)
        return F.linear(y.transpose(1, 2).reshape(B, T, -1), stacked_weight((self.o_proj,), kv_cache))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x, kv_cache=None):
        gate, up = F.linear(x, stacked_weight((self.gate_proj, self.up_proj), kv_cache)).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, stacked_weight((self.down_proj,), kv_cache))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, is_causal, kv_cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, is_causal, kv_cache)
        x = x + self.mlp(self.post_attention_layernorm(x), kv_cache)
        return x


class Decoder(nn.Module):
    """The trunk, named `model` inside GPT so that parameter names match HF (`model.layers.0...`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


def attention_mask_for(past_len: int, T: int, attention_mask: torch.Tensor, device) -> torch.Tensor:
    """Boolean SDPA mask (B, 1, T, past_len+T): True where a query may attend to a key.

    Combines causality over cache slots (key slot <= query slot) with key padding
    (attention_mask 1 = real, 0 = pad). A left-pad query has no real key at or before it, and a
    row of all-False gives NaN in SDPA, so every query may always attend to its own slot; outputs
    at pad positions are garbage-but-finite and callers ignore them.
    """
    if T == 1 and attention_mask is not None:  # one new token (decoding): every cached slot is in its past
        mask = attention_mask.ne(0)  # (B, Tk), a new tensor
        mask[:, -1] = True  # its own slot, as below
        return mask[:, None, None, :]  # (B, 1, 1, Tk)
    q_slot = torch.arange(past_len, past_len + T, device=device)[:, None]  # (T, 1)
    k_slot = torch.arange(past_len + T, device=device)[None, :]  # (1, Tk)
    mask = (k_slot <= q_slot)[None, None]  # (1, 1, T, Tk)
    if attention_mask is not None:
        mask = mask & attention_mask.bool()[:, None, None, :]  # (B, 1, T, Tk)
    return mask | (k_slot == q_slot)


# ----------------------------------------------------------------------------- the model


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = dataclasses.replace(cfg)  # our own copy: set_head() edits it
        self.model = Decoder(self.cfg)
        if self.cfg.head == "lm":
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
            if cfg.tie_embeddings:
                self.lm_head.weight = self.model.embed_tokens.weight
        else:
            self.score = nn.Linear(cfg.d_model, 1, bias=False)
        cos, sin = rope_tables(self.cfg)
        self.register_buffer("rope_cos", cos, persistent=False)  # (max_seq_len, head_dim) fp32
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    def _apply(self, fn, *args, **kwargs):
        # Module.to(torch.bfloat16) casts floating buffers too; rebuild the RoPE tables in fp32 on
        # whatever device we moved to, since bf16 angles lose precision at large positions.
        super()._apply(fn, *args, **kwargs)
        self.rope_cos, self.rope_sin = rope_tables(self.cfg, device=self.rope_cos.device)
        return self

    @torch.no_grad()
    def init_weights(self) -> None:
        """N(0, init_std) for every Linear/Embedding; the two projections that write into the
        residual stream (o_proj, down_proj) get init_std/sqrt(2*n_layers) so the residual's
        variance does not grow with depth (GPT-2); norm weights are 1."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        residual_std = std / math.sqrt(2 * self.cfg.n_layers)
        for layer in self.model.layers:
            nn.init.normal_(layer.self_attn.o_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(layer.mlp.down_proj.weight, mean=0.0, std=residual_std)

    def hidden_states(self, input_ids, *, position_ids=None, attention_mask=None, kv_cache=None) -> torch.Tensor:
        """Final normed hidden states (B, T, C). Arguments as in `forward`."""
        B, T = input_ids.shape
        past_len = kv_cache.length if kv_cache is not None else 0
        device = input_ids.device
        if attention_mask is not None and attention_mask.shape != (B, past_len + T):
            raise ValueError(
                f"attention_mask must have shape (batch, cached + new tokens) = {(B, past_len + T)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        if position_ids is None:
            if attention_mask is not None:  # left padding: each row's first real token is position 0
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]  # (B, T)
            elif past_len + T > self.cfg.max_seq_len:
                raise ValueError(
                    f"sequence of {past_len + T} tokens exceeds max_seq_len={self.cfg.max_seq_len}"
                )
            else:
                position_ids = torch.arange(past_len, past_len + T, device=device)[None]  # (1, T)
        dtype = compute_dtype(self.model.embed_tokens.weight)  # what q and k will be in
        cos = self.rope_cos[position_ids][:, None].to(dtype)  # (B or 1, 1, T, D)
        sin = self.rope_sin[position_ids][:, None].to(dtype)

        # Plain causal attention over a fresh sequence takes SDPA's fast is_causal path (flash on
        # GPU). A single new token with no padding may see every cached key: no mask at all.
        # Everything else (padding, or several new tokens after a cache) needs an explicit mask.
        mask, is_causal = None, False
        if attention_mask is None and past_len == 0:
            is_causal = T > 1
        elif attention_mask is not None or T > 1:
            mask = attention_mask_for(past_len, T, attention_mask, device)

        x = self.model.embed_tokens(input_ids)  # (B, T, C)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask, is_causal, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.model.norm(x)

    def forward(self, input_ids, *, position_ids=None, attention_mask=None, kv_cache=None) -> torch.Tensor:
        """input_ids (B, T) long -> logits (B, T, V) for head="lm", or scores (B, T) for head="scalar".

        position_ids (B, T): RoPE positions; if None they are derived from attention_mask
            (cumsum - 1, so left-padded rows start at 0), else arange(cached, cached + T).
        attention_mask (B, cached + T): 1 = real token, 0 = padding, covering cached and new slots.
        kv_cache: a KVCache; this call appends its keys/values and advances it by T.
        """
        h = self.hidden_states(
            input_ids, position_ids=position_ids, attention_mask=attention_mask, kv_cache=kv_cache
        )  # (B, T, C)
        if self.cfg.head == "lm":
            return F.linear(h, stacked_weight((self.lm_head,), kv_cache))  # (B, T, V)
        return self.score(h).squeeze(-1)  # (B, T)

    def set_head(self, head: str) -> None:
        """Swap the output head: "scalar" replaces lm_head with a fresh `score` Linear(d_model, 1)
        (reward/value model initialised from an SFT model); "lm" does the reverse (fresh lm_head,
        tied again if cfg.tie_embeddings). New heads are N(0, init_std), like HF."""
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if head == self.cfg.head:
            return
        weight = self.model.embed_tokens.weight
        if head == "scalar":
            del self.lm_head
            self.score = nn.Linear(self.cfg.d_model, 1, bias=False, device=weight.device, dtype=weight.dtype)
            nn.init.normal_(self.score.weight, mean=0.0, std=self.cfg.init_std)
        else:
            del self.score
            self.lm_head = nn.Linear(
                self.cfg.d_model, self.cfg.vocab_size, bias=False, device=weight.device, dtype=weight.dtype
            )
            if self.cfg.tie_embeddings:
                self.lm_head.weight = weight
            else:
                nn.init.normal_(self.lm_head.weight, mean=0.0, std=self.cfg.init_std)
        self.cfg.head = head

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Number of distinct parameters. exclude_embeddings drops the input embedding table
        (which, when tied, is also the lm_head)."""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once
        if exclude_embeddings:
            n -= self.model.embed_tokens.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B / nanoGPT style:

            6 * N_matmul + 12 * n_layers * d_model * seq_len

        N_matmul counts every weight used in a matmul: the attention and MLP projections of all
        layers plus the output head (counted even when tied, since the matmul still happens); the
        embedding lookup and norm weights do no matmuls. The second term is QK^T and attention @ V
        (2 matmuls x 2 FLOPs/MAC x 3 for fwd+bwd, over d_model = n_heads * head_dim channels),
        counted without the causal half-saving, as PaLM does.
        """
        c = self.cfg
        kv_dim = c.n_kv_heads * c.head_dim
        per_layer = c.d_model * c.d_model * 2 + c.d_model * kv_dim * 2 + 3 * c.d_model * c.ffn_hidden
        head = c.d_model * (c.vocab_size if c.head == "lm" else 1)
        n_matmul = c.n_layers * per_layer + head
        return 6.0 * n_matmul + 12.0 * c.n_layers * c.d_model * seq_len


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross entropy in fp32 over positions whose target != ignore_index.

    logits (B, T, V), targets (B, T) already shifted (targets[t] is the token after input[t]).
    A batch with every target ignored returns 0 (not NaN), so gradient accumulation stays finite.
    """
    loss_sum = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=ignore_index, reduction="sum"
    )
    n_targets = (targets != ignore_index).sum().clamp(min=1)
    return loss_sum / n_targets
