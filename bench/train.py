"""Training throughput: picochat's GPT vs `transformers.LlamaForCausalLM`, same config and weights.

For each size and precision both models start from the same weights (copied, and checked to give
the same fp32 logits), train on the same batch with the same AdamW hyperparameters, and are
timed alternately in this process (bench/interleave.py) so machine load falls on both alike.
A step is what a training loop does: forward under the precision's autocast, next-token loss,
backward, gradient clipping to norm 1, AdamW step, zero_grad.

  picochat:     GPT + `picochat.train.trainer.build_optimizer` + `lm_loss`, as the Trainer runs it
  transformers: LlamaForCausalLM(labels=...) + torch AdamW(fused=True), what HF `Trainer` picks by
                default (`optim="adamw_torch_fused"`), with picochat's lr, betas and weight decay

Peak memory is measured separately, in a fresh subprocess per (framework, size, precision): the
process's peak resident set (VmHWM) over building the model and a few training steps, and that
minus the resident set just before the model was built (imports excluded). Not ru_maxrss: Linux
hands a subprocess its parent's peak (see `probe_memory`).
MFU = tokens/s x training FLOPs per token (`GPT.flops_per_token`, the PaLM formula) / the
best matmul FLOP/s this run measured in the same precision (bench/machine.py).

    python -m bench.train                       # tiny preset and d512, fp32 and bf16
    python -m bench.train --sizes tiny --precisions bf16 --windows 9
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.interleave import interleaved_times, paired_speedup
from bench.machine import machine_info, matmul_peak_flops, median
from bench.report import emit_json, format_table
from picochat.config import TrainConfig, build_config
from picochat.core.model import GPT, ModelConfig, lm_loss
from picochat.core.precision import autocast, cpu_has_fast_bf16
from picochat.train.trainer import build_optimizer

FRAMEWORKS = ("picochat", "transformers")
REPO = Path(__file__).resolve().parents[1]  # `python -m bench.train` runs from here


@dataclass
class Size:
    model: ModelConfig
    batch_size: int
    seq_len: int
    train: TrainConfig


def sizes() -> dict[str, Size]:
    tiny = build_config("tiny")
    return {
        # for the smoke test: a model that trains a step in milliseconds
        "micro": Size(ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, ffn_hidden=64,
                                  max_seq_len=32), batch_size=2, seq_len=32, train=tiny.pretrain.train),
        # the tiny preset exactly: picochat/configs/tiny.yaml
        "tiny": Size(tiny.model, tiny.pretrain.train.batch_size, tiny.pretrain.seq_len, tiny.pretrain.train),
        # a bigger one, ~27M matmul parameters: where matmuls dominate the step
        "d512": Size(ModelConfig(vocab_size=tiny.model.vocab_size, d_model=512, n_layers=8, n_heads=8, n_kv_heads=8,
                                 ffn_hidden=1408, max_seq_len=256),
                     batch_size=8, seq_len=256, train=tiny.pretrain.train),
    }


def make_batch(size: Size, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, targets) (B, T): a random token window and the same window shifted by one."""
    g = torch.Generator().manual_seed(seed)
    window = torch.randint(0, size.model.vocab_size, (size.batch_size, size.seq_len + 1), generator=g)
    return window[:, :-1].contiguous(), window[:, 1:].contiguous()


def hf_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """What HF `Trainer` builds by default (torch AdamW, fused), with picochat's hyperparameters:
    weight decay on matrices only, as both libraries do."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)


def build(framework: str, size: Size, precision: str, seed: int = 0, compiled: bool = False):
    """(model, one-training-step callable) for a framework; weights from `seed` (equal across frameworks).
    compiled: through `torch.compile` as `train.compile=true` runs it: picochat's whole loss, transformers'
    model (whose forward computes the loss from `labels`)."""
    torch.manual_seed(seed)
    gpt = GPT(size.model)
    ids, targets = make_batch(size)
    device = torch.device("cpu")
    if framework == "picochat":
        model = gpt
        optimizer = build_optimizer(model, size.train, device)

        def loss_fn():
            return lm_loss(model(ids), targets)
        if compiled:  # the whole loss, as the Trainer compiles it in one process
            loss_fn = torch.compile(loss_fn)
    else:
        from bench.hf_llama import hf_twin

        model = hf_twin(gpt)
        optimizer = hf_optimizer(model, size.train)
        forward = torch.compile(model) if compiled else model  # as TrainingArguments(torch_compile=True)

        def loss_fn():  # shift_labels: the same targets as picochat's, no internal shift
            return forward(input_ids=ids, labels=targets, shift_labels=targets, use_cache=False).loss
    model.train()

    def step() -> float:
        with autocast(precision, device):
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), size.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return model, step


def check_equal_start(size: Size) -> dict:
    """Both frameworks' models from the same seed: same fp32 logits, same first loss."""
    from bench.hf_llama import check_same_logits

    pc, pc_step = build("picochat", size, "fp32")
    hf, hf_step = build("transformers", size, "fp32")
    ids, _ = make_batch(size)
    diff = check_same_logits(pc, hf, ids)
    pc_loss, hf_loss = pc_step(), hf_step()
    if abs(pc_loss - hf_loss) > 1e-4:
        raise AssertionError(f"first-step losses differ: picochat {pc_loss:.6f}, transformers {hf_loss:.6f}")
    return {"max_logit_diff": diff, "first_loss": pc_loss}


def resident_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process from /proc/self/status, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise OSError(f"no {field} in /proc/self/status")


def probe_memory(framework: str, size_name: str, precision: str, steps: int) -> dict:
    """Run in a fresh process: peak resident memory while building the model and training `steps` steps.

    Linux only. `getrusage(RUSAGE_SELF).ru_maxrss` cannot be used: Linux carries it over fork and
    exec, so a subprocess starts with its parent's peak. /proc's VmHWM belongs to this process's
    own memory map, and writing 5 to /proc/self/clear_refs resets it to the current RSS.
    """
    if framework == "transformers":  # its (lazy) imports are not training memory
        from transformers import LlamaForCausalLM  # noqa: F401
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = resident_mb("VmRSS")
    _, step = build(framework, sizes()[size_name], precision)
    for _ in range(steps):
        step()
    peak = resident_mb("VmHWM")
    return {"peak_rss_mb": peak, "train_rss_mb": peak - before}


def measure_memory(framework: str, size_name: str, precision: str, threads: int) -> dict:
    cmd = [sys.executable, "-m", "bench.train", "--probe-memory", framework, size_name, precision,
           "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(args) -> dict:
    info = machine_info("transformers")
    precisions = [p for p in args.precisions if p != "bf16" or cpu_has_fast_bf16()]
    skipped = sorted(set(args.precisions) - set(precisions))
    peaks = {p: matmul_peak_flops(torch.bfloat16 if p == "bf16" else torch.float32,
                                  sizes=(128, 256) if args.sizes == ["micro"] else (1024, 2048))
             for p in precisions}
    print("matmul peak: " + ", ".join(f"{p} {v / 1e12:.3f} TFLOP/s" for p, v in peaks.items()) +
          (f" (skipped {skipped}: no fast bf16 on this CPU)" if skipped else ""), flush=True)
    rows = []
    for size_name in args.sizes:
        size = sizes()[size_name]
        start = check_equal_start(size)
        print(f"[{size_name}] same start: max |logit diff| {start['max_logit_diff']:.1e}, "
              f"first loss {start['first_loss']:.4f}", flush=True)
        tokens = size.batch_size * size.seq_len
        flops_per_token = GPT(size.model).flops_per_token(size.seq_len)
        for precision in precisions:
            steps = {fw: build(fw, size, precision)[1] for fw in FRAMEWORKS}
            if args.compile:  # compiled twins, timed in the same alternating windows (compiled in warm-up)
                steps.update({f"{fw}+compile": build(fw, size, precision, compiled=True)[1] for fw in FRAMEWORKS})
            times = interleaved_times(steps, warmup=args.warmup, windows=args.windows,
                                      reps_per_window=args.steps_per_window)
            for fw in steps:
                speedup = paired_speedup(times[fw], times["transformers"])
                tps = tokens / median(times[fw])
                row = {"size": size_name, "precision": precision, "framework": fw, "tokens_per_s": tps,
                       "step_ms": 1000 * median(times[fw]),
                       "mfu": tps * flops_per_token / peaks[precision],
                       "speedup_vs_transformers": speedup,
                       "window_tokens_per_s": [tokens / t for t in times[fw]]}
                if args.compile:
                    row["speedup_vs_transformers_compiled"] = paired_speedup(times[fw], times["transformers+compile"])
                if not args.no_memory and fw in FRAMEWORKS:
                    row.update(measure_memory(fw, size_name, precision, torch.get_num_threads()))
                rows.append(row)
                print(f"[{size_name} {precision}] {fw}: {tps:,.0f} tok/s, MFU {row['mfu']:.1%}", flush=True)
            for fw in steps:
                if fw != "transformers":
                    print(f"[{size_name} {precision}] {fw} / transformers = "
                          f"{paired_speedup(times[fw], times['transformers']):.2f}x", flush=True)
    return {"machine": info, "matmul_peak_tflops": {p: v / 1e12 for p, v in peaks.items()},
            "settings": {"warmup": args.warmup, "windows": args.windows, "steps_per_window": args.steps_per_window,
                         "sizes": {n: {"model": sizes()[n].model.to_dict(), "batch_size": sizes()[n].batch_size,
                                       "seq_len": sizes()[n].seq_len} for n in args.sizes}},
            "results": rows, "load_avg_after": machine_info()["load_avg_1_5_15"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["tiny", "d512"], choices=list(sizes()))
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per framework before timing")
    p.add_argument("--windows", type=int, default=7, help="timing windows per framework (alternating)")
    p.add_argument("--steps-per-window", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--compile", action="store_true",
                   help="also time both frameworks under torch.compile (picochat's train.compile=true)")
    p.add_argument("--probe-memory", nargs=3, metavar=("FRAMEWORK", "SIZE", "PRECISION"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.probe_memory:
        print(json.dumps(probe_memory(*args.probe_memory, steps=args.warmup + 1)))
        return 0
    result = run(args)
    columns = [("size", "size"), ("precision", "precision"), ("framework", "framework"),
               ("tokens_per_s", "tokens/s"), ("step_ms", "step ms"), ("mfu", "MFU"),
               ("speedup_vs_transformers", "x transformers")]
    if args.compile:
        columns.append(("speedup_vs_transformers_compiled", "x transformers+compile"))
    if not args.no_memory:
        columns += [("peak_rss_mb", "peak RSS MiB"), ("train_rss_mb", "RSS above imports MiB")]
    print()
    print(format_table(result["results"], columns))
    emit_json("train", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
