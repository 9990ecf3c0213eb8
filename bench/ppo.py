"""One PPO iteration (rollout + scoring + update): picochat vs TRL's PPOTrainer, same models and sizes.

Both start from the same weights: the policy and the frozen reference are a picochat run's SFT
model, the value model and the reward model are its reward model (copied into
`LlamaForCausalLM` / `LlamaForSequenceClassification` for TRL, checked to give the same logits).
Both iterate with the same settings, taken from the run's PPO config: `rollout_prompts` prompts
(one sampled response each, up to `max_new_tokens`, temperature, stop at `<|im_end|>`), reward
model score, per-token KL penalty, GAE, `epochs` epochs over minibatches of `minibatch_size`
(one optimizer step each), clipped policy and value losses, the same learning rate.

  picochat: `picochat.train.ppo.PPOTrainer.iterate()`, what `picochat ppo` runs per iteration
  TRL:      `trl.experimental.ppo.PPOTrainer.train()` with total_episodes = one batch, i.e. one
            iteration (`per_device_train_batch_size=rollout_prompts`, `num_mini_batches =
            rollout_prompts / minibatch_size`, `gradient_accumulation_steps=1`)

TRL's PPOTrainer is in `trl.experimental.ppo` up to TRL 1.12.0 and was removed in 1.13
(huggingface/trl#7020), hence the `trl>=1.10,<1.13` pin of the `bench` extra. Precision: both run
inside the same `torch.autocast` (bf16 where the CPU has it, as `picochat ppo` picks by default),
and TRL additionally gets `bf16=True`; without the outer autocast TRL would sample and score in
fp32, which is slower for reasons of precision, not of framework. The two policies sample
different responses (different random streams), so response lengths are reported alongside.

    python -m bench.ppo --run runs/tiny                  # a finished `picochat run` directory
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from bench.hf_llama import check_same_logits, hf_scalar_twin, hf_twin
from bench.interleave import interleaved_times, paired_speedup
from bench.machine import machine_info, median
from bench.report import emit_json, format_table
from picochat.config import build_config, parse_overrides
from picochat.core.precision import autocast
from picochat.core.prompt import encode_prompt
from picochat.train.ppo import PPOTrainer as PicochatPPO

STAGES_READ = ("sft", "rm", "world")  # what a PPO iteration reads from a run directory


def picochat_trainer(run_dir: Path, work: Path, overrides: list[str]) -> PicochatPPO:
    """picochat's PPO trainer on `run_dir`'s models, writing (only metrics) into `work`."""
    for stage in STAGES_READ:
        if not (run_dir / stage).exists():
            raise FileNotFoundError(f"{run_dir / stage} is missing: --run needs a finished `picochat run` directory")
        (work / stage).symlink_to((run_dir / stage).resolve())
    cfg = build_config(base_file=run_dir / "config.yaml", overrides=parse_overrides(overrides))
    return PicochatPPO(cfg, work, show_progress=False)


def trl_trainer(pc: PicochatPPO, work: Path, n_prompts: int):
    """TRL's PPOTrainer on copies of the same four models, with picochat's PPO settings."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok = pc.tokenizer
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(pc.tokenizer_file), pad_token="<|pad|>",
                                     eos_token="<|im_end|>", padding_side="left")
    assert (hf_tok.pad_token_id, hf_tok.eos_token_id) == (tok.pad_id, tok.im_end_id)
    policy, reference = hf_twin(pc.policy), hf_twin(pc.reference)
    value = hf_scalar_twin(pc.value, tok.pad_id)
    reward = hf_scalar_twin(pc.reward.model, tok.pad_id)
    probe = torch.tensor([encode_prompt(tok, pc.prompts[0])])
    check_same_logits(pc.policy, policy, probe)
    with torch.no_grad():
        per_position = value.score(value.model(probe).last_hidden_state).squeeze(-1)  # (1, T), as TRL reads it
        diff = (pc.value(probe) - per_position).abs().max().item()
    if diff > 1e-4:
        raise AssertionError(f"value model copies differ by {diff:.2e}")
    prompts = pc.prompts[:n_prompts]
    dataset = Dataset.from_dict({"input_ids": [encode_prompt(tok, p) for p in prompts]})
    p, t = pc.pcfg, pc.pcfg.train
    args = PPOConfig(
        output_dir=str(work / "trl"), report_to="none", save_strategy="no", logging_strategy="no",
        disable_tqdm=True, num_sample_generations=0, use_cpu=True, bf16=pc.precision == "bf16", seed=t.seed,
        per_device_train_batch_size=p.rollout_prompts, gradient_accumulation_steps=1,
        num_mini_batches=p.rollout_prompts // p.minibatch_size, num_ppo_epochs=p.epochs,
        local_rollout_forward_batch_size=p.rollout_prompts, total_episodes=p.rollout_prompts,
        response_length=p.max_new_tokens, temperature=p.temperature, stop_token="eos",
        missing_eos_penalty=-p.no_eos_penalty, kl_coef=p.kl_coef, kl_estimator=p.kl_estimator,
        whiten_rewards=p.whiten_rewards, cliprange=p.clip_range, cliprange_value=p.vf_clip_range,
        vf_coef=p.vf_coef, gamma=p.gamma, lam=p.lam, learning_rate=t.lr, adam_beta1=t.beta1, adam_beta2=t.beta2,
        weight_decay=t.weight_decay, lr_scheduler_type="constant",
    )
    record_response_lengths(policy, tok.pad_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = PPOTrainer(args=args, processing_class=hf_tok, model=policy, ref_model=reference,
                             reward_model=reward, value_model=value, train_dataset=dataset, eval_dataset=dataset)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints every iteration's metrics dict
    return trainer


# TRL's PPO is value-model PPO on the whole policy with one answer per prompt; the tiny preset's own
# PPO (best of 4 on the norm gains, bench/ppo_update.py) has no TRL counterpart. These settings,
# the other presets' defaults, come first, so that command-line overrides still win.
TRL_COMPARABLE = ["ppo.advantage=gae", "ppo.samples_per_prompt=1", "ppo.trainable=all", "ppo.rollout_prompts=64",
                  "ppo.minibatch_size=16", "ppo.train.lr=2e-5", "ppo.entropy_coef=0", "ppo.entropy_rows=all"]


def run(args) -> dict:
    run_dir = Path(args.run)
    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
        work = Path(tmp)
        pc = picochat_trainer(run_dir, work, TRL_COMPARABLE + args.overrides)
        trl = trl_trainer(pc, work, args.trl_prompts)
        device = pc.device
        lengths: dict[str, list[float]] = {"picochat": [], "trl": []}

        def picochat_iteration():
            record = pc.iterate()
            lengths["picochat"].append(record["response_length"])

        def trl_iteration():
            with autocast(pc.precision, device), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trl.train()
            lengths["trl"].append(trl.policy_model.response_lengths[-1])

        contenders = {"picochat": picochat_iteration, "trl": trl_iteration}
        times = interleaved_times(contenders, warmup=args.warmup, windows=args.windows, reps_per_window=1)
    speedup = paired_speedup(times["picochat"], times["trl"])
    p = pc.pcfg
    rows = []
    for name in contenders:
        t = median(times[name])
        timed_lengths = lengths[name][args.warmup:]
        rows.append({"framework": name, "seconds_per_iteration": t,
                     "speedup_vs_trl": speedup if name == "picochat" else 1.0,
                     "mean_response_tokens": sum(timed_lengths) / max(1, len(timed_lengths)),
                     "window_seconds": times[name]})
    print(f"picochat / TRL = {speedup:.2f}x per PPO iteration", flush=True)
    return {"machine": machine_info("transformers", "trl"), "run": str(run_dir), "precision": pc.precision,
            "settings": {"rollout_prompts": p.rollout_prompts, "max_new_tokens": p.max_new_tokens,
                         "epochs": p.epochs, "minibatch_size": p.minibatch_size, "temperature": p.temperature,
                         "model": pc.policy.cfg.to_dict(), "warmup": args.warmup, "windows": args.windows},
            "results": rows}


def record_response_lengths(policy, pad_id: int) -> None:
    """Make `policy.generate` (which TRL's rollout calls) note the mean response length, end token
    included, in `policy.response_lengths`: TRL does not log it."""
    policy.response_lengths = []
    generate = policy.generate

    def generate_and_record(*args, **kwargs):
        out = generate(*args, **kwargs)
        responses = out.sequences[:, kwargs["input_ids"].shape[1]:]
        policy.response_lengths.append((responses != pad_id).sum(1).float().mean().item())
        return out

    policy.generate = generate_and_record


def parse_iteration_args(p: argparse.ArgumentParser, argv: list[str] | None, overrides_help: str):
    """The arguments every PPO-iteration benchmark takes (a run directory, warm-up, windows,
    threads, config overrides), parsed, with torch's thread count set."""
    p.add_argument("--run", default="runs/tiny", help="a finished `picochat run` directory (sft, rm, world)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    return args


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trl-prompts", type=int, default=512, help="prompts in TRL's dataset (it samples batches from it)")
    args = parse_iteration_args(p, argv, "config overrides for both, e.g. ppo.rollout_prompts=32")
    result = run(args)
    print()
    print(format_table(result["results"], [("framework", "framework"), ("seconds_per_iteration", "s/iteration"),
                                           ("speedup_vs_trl", "x TRL"), ("mean_response_tokens", "response tokens")]))
    emit_json("ppo", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
