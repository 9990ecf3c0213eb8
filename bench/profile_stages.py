"""Where the demo's time goes: the top operators of each stage's inner step, by torch.profiler.

Each stage's repeated unit, on the tiny preset's model (random weights; the cost does not depend
on them), after warm-up, profiled for a few repetitions on this CPU:

  pretrain / SFT  one optimizer step: batch 16 x 256 tokens, bf16 autocast, forward + backward + AdamW
  sampling        (label, PPO rollouts, evaluations) 64 answers x 64 new tokens with the KV cache, fp32
  reward model    one step: 8 prompts x 8 answers x 96 tokens through a scalar head, forward + backward

Prints, per unit, its median wall time and the operators that take the most self CPU time (the
share of the profiled time), and the share that no operator accounts for (Python and dispatch).

    python -m bench.profile_stages --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench.machine import machine_info
from bench.report import emit_json
from picochat.config import build_config
from picochat.core.generate import SamplingConfig, generate
from picochat.core.model import GPT, lm_loss
from picochat.core.precision import autocast
from picochat.train.trainer import build_optimizer


def units(vocab: int):
    cfg = build_config("tiny")
    model_cfg = cfg.model
    model_cfg.vocab_size = vocab
    torch.manual_seed(0)
    lm = GPT(model_cfg)
    optimizer = build_optimizer(lm, cfg.pretrain.train, torch.device("cpu"))
    tokens = torch.randint(8, vocab, (16, 257))

    def train_step():
        with autocast("bf16", torch.device("cpu")):
            logits = lm(tokens[:, :-1])
        lm_loss(logits, tokens[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    prompts = [torch.randint(8, vocab, (n,)).tolist() for n in torch.linspace(12, 40, 64).long().tolist()]

    def sample():
        with torch.no_grad():
            generate(lm, prompts, SamplingConfig(max_new_tokens=64, temperature=1.0, seed=0))

    rm = GPT(model_cfg)
    rm.set_head("scalar")
    rm_optimizer = build_optimizer(rm, cfg.rm.train, torch.device("cpu"))
    answers = torch.randint(8, vocab, (64, 96))

    def rm_step():
        with autocast("bf16", torch.device("cpu")):
            scores = rm(answers)[:, -1].float().view(8, 8)
        torch.nn.functional.logsigmoid(scores[:, :1] - scores[:, 1:]).mean().neg().backward()
        rm_optimizer.step()
        rm_optimizer.zero_grad(set_to_none=True)

    return {"pretrain / SFT step": train_step, "sampling 64 x 64 tokens": sample, "reward model step": rm_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=2752, help="the demo tokenizer's rows (2,720 rounded to 64)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for name, unit in units(args.vocab).items():
        unit()  # warm-up
        times = []
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                unit()
                times.append(time.perf_counter() - t0)
        events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
        total = sum(e.self_cpu_time_total for e in events)
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]
        wall = sum(times) * 1e6
        rows = [{"op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count // args.repeats} for e in top]
        print(f"\n{name}: {statistics.median(times) * 1e3:.0f} ms median; operators account for "
              f"{min(1.0, total / wall):.0%} of the wall time")
        for r in rows:
            print(f"  {r['share']:6.1%}  {r['calls']:6d} calls  {r['op']}")
        results.append({"unit": name, "median_ms": statistics.median(times) * 1e3, "ops_share_of_wall": total / wall,
                        "top": rows})
    emit_json("profile_stages", {"machine": machine_info(), "threads": args.threads, "results": results})


if __name__ == "__main__":
    main()
