"""Sampling throughput and latency: picochat `generate` vs transformers `generate`, same weights.

Both continue the same prompts by 128 greedy tokens with a KV cache (no stop token, so every row
generates exactly 128), batch 1 and batch 16; the batch-16 prompts have different lengths and are
left-padded (picochat pads internally; transformers gets a left-padded batch and its attention
mask, as its docs say to do). Before timing, the generated tokens are compared token for token:
in fp32 they must be equal; under bf16 autocast the two libraries round differently, so rows may
part ways after a near-tie, and the benchmark reports how many tokens agree.

  picochat:     `picochat.core.generate.generate`, temperature 0
  transformers: `LlamaForCausalLM.generate(do_sample=False)`, its default dynamic KV cache

Both run under the same precision (`torch.autocast` bf16, or fp32), timed alternately in this
process (bench/interleave.py). Throughput = batch x 128 / seconds per call; latency = seconds per
call (prefill + 128 decode steps) and that over 128 (per generated token of a row).

    python -m bench.generate                            # random-init tiny-preset model
    python -m bench.generate --ckpt runs/tiny/sft       # a trained picochat model
    python -m bench.generate --compile                  # the compiled ones too

--compile adds two runners in the same windows: picochat's `generate(compiled=True)` (a compiled
step over a static KV cache, picochat/core/decode_step.py) and transformers as its documentation
recommends for compiled decoding (`cache_implementation="static"`, its forward through
`torch.compile`). They compile in the first, untimed calls.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from bench.hf_llama import check_same_logits, hf_twin
from bench.interleave import interleaved_times, paired_speedup
from bench.machine import machine_info, median
from bench.report import emit_json, format_table
from picochat.config import build_config
from picochat.core.generate import SamplingConfig, generate
from picochat.core.model import GPT, ModelConfig
from picochat.core.precision import autocast, cpu_has_fast_bf16

PAD_ID = 0


def load_model(ckpt: str | None, micro: bool) -> GPT:
    if ckpt:
        from picochat.core.checkpoint import load_model_dir

        return load_model_dir(ckpt, "cpu")[0].eval()
    torch.manual_seed(0)
    cfg = build_config("tiny").model
    if micro:
        cfg = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=64,
                          max_seq_len=64)
    return GPT(cfg).eval()


def make_prompts(batch_size: int, vocab_size: int, max_len: int, seed: int = 0) -> list[list[int]]:
    """Random token prompts (never the pad id) of lengths spread over [max_len/4, max_len]."""
    g = torch.Generator().manual_seed(seed + batch_size)
    lengths = torch.linspace(max(1, max_len // 4), max_len, batch_size).round().long().tolist() if batch_size > 1 \
        else [max_len]
    return [torch.randint(1, vocab_size, (n,), generator=g).tolist() for n in lengths]


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


def picochat_runner(model: GPT, prompts: list[list[int]], new_tokens: int, precision: str, compiled: bool):
    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0)

    def run() -> list[list[int]]:
        with autocast(precision, torch.device("cpu")):
            return [r.tokens for r in generate(model, prompts, sampling, pad_id=PAD_ID, compiled=compiled)]

    return run


def transformers_runner(hf, prompts: list[list[int]], new_tokens: int, precision: str):
    ids, mask = left_padded(prompts)

    @torch.no_grad()
    def run() -> list[list[int]]:
        with autocast(precision, torch.device("cpu")):
            out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                              pad_token_id=PAD_ID)
        return out[:, ids.shape[1]:].tolist()

    return run


def agreement(a: list[list[int]], b: list[list[int]]) -> tuple[float, int]:
    """(fraction of tokens equal up to each row's first difference, rows entirely equal)."""
    agreed, total, equal_rows = 0, 0, 0
    for x, y in zip(a, b):
        n = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
        agreed += n
        total += max(len(x), len(y))
        equal_rows += x == y
    return agreed / max(1, total), equal_rows


def configured_twin(model: GPT, compiled: bool):
    """transformers' twin of `model`, generating exactly new_tokens per row (no end token); compiled:
    a static cache and the forward through torch.compile, as transformers documents it."""
    hf = hf_twin(model).eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.bos_token_id = None
    hf.generation_config.pad_token_id = PAD_ID
    if compiled:
        hf.generation_config.cache_implementation = "static"
        hf.forward = torch.compile(hf.forward)
    return hf


def run(args) -> dict:
    model = load_model(args.ckpt, args.micro)
    hf = configured_twin(model, compiled=False)
    hf_compiled = configured_twin(model, compiled=True) if args.compile else None
    probe = torch.randint(1, model.cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    diff = check_same_logits(model, hf, probe)
    print(f"same weights: max |logit diff| {diff:.1e}", flush=True)
    prompt_len = min(args.prompt_len, model.cfg.max_seq_len - args.new_tokens)
    precisions = [p for p in args.precisions if p != "bf16" or cpu_has_fast_bf16()]
    rows = []
    for precision in precisions:
        for batch_size in args.batch_sizes:
            prompts = make_prompts(batch_size, model.cfg.vocab_size, prompt_len)
            runners = {"picochat": picochat_runner(model, prompts, args.new_tokens, precision, compiled=False),
                       "transformers": transformers_runner(hf, prompts, args.new_tokens, precision)}
            if args.compile:
                runners["picochat compiled"] = picochat_runner(model, prompts, args.new_tokens, precision,
                                                               compiled=True)
                runners["transformers compiled"] = transformers_runner(hf_compiled, prompts, args.new_tokens,
                                                                       precision)
            outputs, first_call_s = {}, {}
            for name, runner in runners.items():  # the compiled ones compile here, outside the windows
                start = time.perf_counter()
                outputs[name] = runner()
                first_call_s[name] = time.perf_counter() - start
            agreements = {name: agreement(outputs[name], outputs["transformers"]) for name in runners}
            for name, (agreed, equal_rows) in agreements.items():
                if precision == "fp32" and equal_rows != batch_size:
                    raise AssertionError(
                        f"greedy outputs of {name} and transformers differ in fp32 at batch {batch_size}: "
                        f"{equal_rows}/{batch_size} rows equal, {agreed:.1%} of tokens agree before the first "
                        f"difference")
            times = interleaved_times(runners, warmup=args.warmup, windows=args.windows, reps_per_window=1)
            for name in runners:
                t = median(times[name])
                agreed, equal_rows = agreements[name]
                rows.append({"precision": precision, "batch": batch_size, "framework": name,
                             "tokens_per_s": batch_size * args.new_tokens / t, "latency_ms": 1000 * t,
                             "ms_per_token": 1000 * t / args.new_tokens,
                             "speedup_vs_transformers": paired_speedup(times[name], times["transformers"]),
                             "speedup_vs_transformers_compiled":
                                 paired_speedup(times[name], times["transformers compiled"]) if args.compile else None,
                             "greedy_rows_equal": f"{equal_rows}/{batch_size}", "greedy_token_agreement": agreed,
                             "first_call_s": first_call_s[name], "window_latency_ms": [1000 * x for x in times[name]]})
            summary = "; ".join(f"{name} {paired_speedup(times[name], times['transformers']):.2f}x"
                                for name in runners if name != "transformers")
            print(f"[{precision} batch {batch_size}] against transformers: {summary}", flush=True)
    return {"machine": machine_info("transformers"), "model": model.cfg.to_dict(), "checkpoint": args.ckpt,
            "settings": {"new_tokens": args.new_tokens, "prompt_len_max": prompt_len, "warmup": args.warmup,
                         "windows": args.windows, "compiled": args.compile},
            "max_logit_diff": diff, "results": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="a picochat model directory (default: random-init tiny preset)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=48, help="longest prompt, in tokens")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--micro", action="store_true", help="a micro random model (smoke test)")
    p.add_argument("--compile", action="store_true",
                   help="also both compiled: picochat's compiled decode step, transformers' static cache and "
                        "compiled forward")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    result = run(args)
    print()
    print(format_table(result["results"], [
        ("precision", "precision"), ("batch", "batch"), ("framework", "framework"), ("tokens_per_s", "tokens/s"),
        ("latency_ms", "ms/call"), ("ms_per_token", "ms/token"), ("speedup_vs_transformers", "x transformers"),
        *([("speedup_vs_transformers_compiled", "x transformers compiled")] if args.compile else []),
        ("greedy_rows_equal", "greedy rows equal"), ("greedy_token_agreement", "token agreement"),
        ("first_call_s", "first call s")]))
    emit_json("generate", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
