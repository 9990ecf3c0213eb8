"""Batched sampling from a GPT with a KV cache.

Prompts of different lengths are LEFT-padded into one (B, T) batch so that every row's next token
is in the last column; an attention mask hides the pads and position ids restart at 0 at each
row's first real token, so a padded row computes what it would compute alone. One forward fills
the cache with all prompts (prefill), then each step feeds one token per row.

    results = generate(model, [[1, 2, 3], [4, 5]], SamplingConfig(max_new_tokens=32, temperature=0))
    results[0].tokens, results[0].finish_reason   # new tokens (stop token excluded), "stop"|"length"
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from picochat.core.decode_step import CompiledDecoder, StaticCache, can_compile_decode
from picochat.core.model import GPT, KVCache


@dataclass
class SamplingConfig:
    """The sampler's settings; "off" is None (top_k, top_p, seed), and temperature 0 is greedy.

    Two other settings objects feed it, each in its boundary's convention: `picochat.config.
    SampleConfig` (a YAML/command-line section, where "off" must be a number: top_k 0, top_p 1;
    `SampleConfig.sampling()` converts) and the server's `SamplingParams` (the OpenAI request
    fields: max_tokens, stop strings, None for "off")."""

    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 = greedy (argmax); top_k/top_p are then irrelevant
    top_k: int | None = None  # keep only the k most likely tokens
    top_p: float | None = None  # nucleus: keep the smallest set of tokens with total probability >= top_p
    seed: int | None = None  # seeds a private torch.Generator; None = torch's global RNG
    stop_ids: tuple[int, ...] = ()  # a row finishes when it samples one of these (not returned)


@dataclass
class GenerationResult:
    tokens: list[int]  # the new tokens only, without the prompt and without the stop token
    finish_reason: str  # "stop" (sampled a stop id) or "length" (reached max_new_tokens)


def sample_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from logits (B, V) -> (B,) long.

    temperature 0 is argmax. Otherwise logits are divided by temperature, then top_k keeps the k
    largest (ties at the k-th value are all kept), then top_p keeps the smallest prefix of the
    sorted distribution whose probability reaches top_p (the top token always survives).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability of strictly better tokens
        drop_sorted = mass_before >= top_p  # already reached top_p without this token; never drops the top one
        drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    # Inverse-CDF sampling: one uniform number per row. torch.multinomial draws one exponential per
    # vocabulary entry instead, which took a quarter of the demo's sampling time (bench/README.md).
    cdf = probs.cumsum(dim=-1)  # (B, V)
    u = torch.rand(cdf.size(0), 1, generator=generator, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    # the first token whose cumulative probability exceeds u; a token of probability 0 never is
    return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.size(-1) - 1).squeeze(-1)


# inference_mode, not no_grad: no tensor made here leaves the call (results are Python ints), so
# autograd's per-tensor bookkeeping (version counters, views) can be skipped, which is a share of
# every op's fixed cost at batch 1 (bench/README.md)
@torch.inference_mode()
def generate(
    model: GPT,
    prompts: list[list[int]],
    cfg: SamplingConfig,
    pad_id: int = 0,
    use_cache: bool = True,
    on_token: Callable[[int, int], None] | None = None,
    compiled: bool = False,
) -> list[GenerationResult]:
    """Continue each prompt; returns one GenerationResult per prompt, in order.

    Raises ValueError if the longest prompt + max_new_tokens exceeds the model's max_seq_len (we
    do not silently cut prompts). on_token(row, token_id) is called for each returned token as it
    is sampled (streaming). use_cache=False recomputes the whole sequence every step: slow, but
    the reference the cached path is tested against. The model has no dropout, so train/eval mode
    does not matter; dtype follows the caller's autocast, if any. compiled=True decodes with a
    compiled step over a static cache (picochat/core/decode_step.py): the first call of a batch
    size compiles for seconds, the later ones decode faster; models whose parameters are not fp32
    decode eagerly.
    """
    if model.cfg.head != "lm":
        raise ValueError(f"generate needs a model with head='lm', this one has head={model.cfg.head!r}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt, and every prompt needs at least one token")
    if cfg.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {cfg.max_new_tokens}")
    longest = max(len(p) for p in prompts)
    if longest + cfg.max_new_tokens > model.cfg.max_seq_len:
        raise ValueError(
            f"the longest prompt ({longest} tokens) + max_new_tokens ({cfg.max_new_tokens}) = "
            f"{longest + cfg.max_new_tokens} exceeds the model's max_seq_len ({model.cfg.max_seq_len}); "
            f"shorten the prompt or lower max_new_tokens"
        )
    device = next(model.parameters()).device
    if len(prompts) == 1 and device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        # One row on a CPU: oneDNN's bf16 matmul has a fixed cost of ≈45 µs a call at one row,
        # fp32's ≈21 µs, so a single prompt is decoded in fp32 under bf16 autocast too: 1.4x faster
        # (a chat turn, `picochat sample`) and exact. Batches keep the autocast dtype (bench/README.md).
        with torch.autocast("cpu", enabled=False):
            return generate(model, prompts, cfg, pad_id, use_cache, on_token, compiled)
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)

    B = len(prompts)
    width = longest + cfg.max_new_tokens  # every slot this generation uses
    ids = torch.full((B, longest), pad_id, dtype=torch.long, device=device)  # (B, T) left-padded
    mask = torch.ones((B, width), dtype=torch.long, device=device)  # (B, width): 0 = left padding
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt):] = torch.tensor(prompt, dtype=torch.long, device=device)
        mask[row, : longest - len(prompt)] = 0
    positions = (mask[:, :longest].cumsum(-1) - 1).clamp(min=0)  # (B, T): each row's first real token is position 0
    # Without padding no mask is needed: SDPA's causal path for the prompts, and while decoding
    # every cached key is visible. The weights are packed once for all steps (pack_weights).
    padded = any(len(p) != longest for p in prompts)
    if use_cache:
        logits, cache = _prefill(model, prompts, ids, positions, mask[:, :longest] if padded else None, width)
    else:
        cache = None
        logits = model(ids, position_ids=positions, attention_mask=mask[:, :longest] if padded else None)[:, -1]
    next_positions = positions[:, -1:]  # (B, 1)
    decoder = CompiledDecoder(model) if compiled and use_cache and can_compile_decode(model) else None
    if decoder is not None:
        weights = decoder.weights(cache)
        cache = StaticCache(cache, mask.bool())

    stop_ids = set(cfg.stop_ids)
    results = [GenerationResult(tokens=[], finish_reason="length") for _ in prompts]
    finished = [False] * B
    active = list(range(B))  # the prompt each batch row continues
    for step in range(cfg.max_new_tokens):
        next_ids = sample_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p, generator)  # (rows,)
        for i, token in enumerate(next_ids.tolist()):
            row = active[i]
            if finished[row]:
                continue  # finished rows step with the batch until it is compacted; their samples are dropped
            if token in stop_ids:
                finished[row] = True
                results[row].finish_reason = "stop"
                continue
            results[row].tokens.append(token)
            if on_token is not None:
                on_token(row, token)
        if all(finished) or step == cfg.max_new_tokens - 1:
            break
        n_done = sum(finished[row] for row in active)
        if use_cache and 4 * n_done >= len(active):
            # A quarter of the rows finished: drop them. Short answers would otherwise step on with
            # the longest one (a batch of chat answers and one story runs at the story's length).
            keep = [i for i, row in enumerate(active) if not finished[row]]
            index = torch.tensor(keep, device=device)
            cache.keep_rows(index)
            next_ids, next_positions, mask = next_ids[index], next_positions[index], mask[index]
            active = [active[i] for i in keep]
        next_positions = next_positions + 1
        seen = longest + step + 1  # slots holding a token once this step's token is fed
        step_mask = mask[:, :seen] if padded else None
        if decoder is not None:
            logits = decoder(next_ids[:, None], next_positions, seen - 1, cache, weights)
        elif use_cache:
            logits = model(next_ids[:, None], position_ids=next_positions, attention_mask=step_mask,
                           kv_cache=cache)[:, -1]
        else:
            ids = torch.cat([ids, next_ids[:, None]], dim=1)
            positions = torch.cat([positions, next_positions], dim=1)
            logits = model(ids, position_ids=positions, attention_mask=step_mask)[:, -1]
    return results


def _prefill(model: GPT, prompts: list[list[int]], ids: torch.Tensor, positions: torch.Tensor,
             attention_mask: torch.Tensor | None, width: int) -> tuple[torch.Tensor, KVCache]:
    """The prompts' forward into a new cache: (last logits (B, V), the cache of B rows).

    A prompt that appears several times (K answers to one prompt: labeling, PPO's groups, n
    samples per prompt) is run once and its keys/values are copied to each of its rows: the
    forward is over the distinct prompts only."""
    distinct: dict[tuple[int, ...], int] = {}  # prompt -> its index among the distinct ones
    firsts: list[int] = []  # the first row of each distinct prompt
    source: list[int] = []  # row -> its distinct prompt
    for row, prompt in enumerate(prompts):
        key = tuple(prompt)
        if key not in distinct:
            distinct[key] = len(firsts)
            firsts.append(row)
        source.append(distinct[key])
    cache = KVCache(model.cfg, len(firsts), width, pack_weights=True)
    if len(firsts) == len(prompts):
        return model(ids, position_ids=positions, attention_mask=attention_mask, kv_cache=cache)[:, -1], cache
    index = torch.tensor(firsts, device=ids.device)
    logits = model(ids[index], position_ids=positions[index],
                   attention_mask=attention_mask[index] if attention_mask is not None else None,
                   kv_cache=cache)[:, -1]
    copies = torch.tensor(source, device=ids.device)
    cache.keep_rows(copies)
    return logits[copies], cache
