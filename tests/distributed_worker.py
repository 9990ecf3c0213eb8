"""The two-process half of tests/test_distributed.py, run as
`torchrun --standalone --nproc_per_node=2 tests/distributed_worker.py SPEC.json` (gloo on CPU).

Every scenario runs in one job, so process start-up is paid once. Each rank saves what it saw to
`<out>/<scenario>.rank<r>.pt`; the test compares that with single-process runs of the same thing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import torch

from picochat.config import TrainConfig
from picochat.core import distributed
from picochat.core.model import GPT, ModelConfig, lm_loss
from picochat.data.shards import load_shards
from picochat.train.pretrain import make_evaluator, random_windows
from picochat.train.trainer import Trainer

SEQ = 32


def train_config(**changes) -> TrainConfig:
    """A few fp32 steps at a constant lr (so a run cut short and resumed follows the same schedule)."""
    base = dict(max_steps=3, batch_size=2, lr=3e-3, lr_warmup_steps=0, schedule="constant", eval_every=0,
                log_every=1, ckpt_every=0, precision="fp32")
    return TrainConfig(**{**base, **changes})


def make_trainer(out_dir: Path, run_dir: Path, cfg: TrainConfig, rank: int = 0, world_size: int = 1,
                 before_batch=None) -> Trainer:
    """A tiny GPT pretraining on the session run's token shards, each process on its share."""
    train, val, meta = load_shards(run_dir / "pretrain" / "data")
    vocab = json.loads((run_dir / "pretrain" / "config.json").read_text())["model"]["vocab_size"]
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64,
                            max_seq_len=SEQ))

    def get_batch(step, micro):
        if before_batch is not None:
            before_batch(step, micro)
        return random_windows(train, SEQ, cfg.batch_size, cfg.seed, step, micro, rank, world_size)

    return Trainer(model, cfg, out_dir, get_batch=get_batch,
                   loss_fn=lambda m, b: lm_loss(m(b["input_ids"]), b["targets"]),
                   evaluate=make_evaluator(val, meta, SEQ, cfg.batch_size, 2, rank, world_size),
                   tokenizer_file=run_dir / "tokenizer" / "tokenizer.json", stage="test", show_progress=False)


def _save(out: Path, scenario: str, **result) -> None:
    torch.save(result, out / f"{scenario}.rank{distributed.rank()}.pt")


def trainer_scenarios(out: Path, run_dir: Path) -> None:
    rank, world = distributed.rank(), distributed.world_size()
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    for name, accum in (("ddp_accum2", 2), ("ddp_accum1", 1)):
        trainer = make_trainer(out / name, run_dir, train_config(grad_accum_steps=accum), rank, world)
        calls = {"n": 0}

        def counting_hook(state, bucket):
            state["n"] += 1
            return allreduce_hook(None, bucket)

        trainer.wrapped.register_comm_hook(calls, counting_hook)
        result = trainer.fit()
        _save(out, name, weights=trainer.model.state_dict(), allreduce_calls=calls["n"], val_loss=result.eval_metrics)

    trainer = make_trainer(out / "fsdp_accum2", run_dir, train_config(grad_accum_steps=2, parallel="fsdp"), rank, world)
    result = trainer.fit()
    whole = trainer.full_model()
    _save(out, "fsdp_accum2", weights=whole.state_dict() if whole is not None else None, val_loss=result.eval_metrics,
          sharded=trainer.sharded)

    def ctrl_c_on_rank0(step, micro):
        if rank == 0 and step == 1 and micro == 0:
            os.kill(os.getpid(), signal.SIGINT)  # only rank 0 gets it: both must stop after step 2

    trainer = make_trainer(out / "interrupted", run_dir, train_config(max_steps=6), rank, world, ctrl_c_on_rank0)
    result = trainer.fit()
    _save(out, "interrupted", step=result.step, interrupted=result.interrupted)

    if rank == 0:  # FSDP resumes the DDP checkpoint (it holds whole state dicts)
        shutil.copytree(out / "interrupted", out / "fsdp_resume")
    distributed.barrier()
    trainer = make_trainer(out / "fsdp_resume", run_dir, train_config(max_steps=6, parallel="fsdp"), rank, world)
    result = trainer.fit()
    whole = trainer.full_model()
    _save(out, "fsdp_resume", weights=whole.state_dict() if whole is not None else None, step=result.step)


def ppo_scenario(out: Path, run_dir: Path) -> None:
    from picochat.config import build_config
    from picochat.train.ppo import PPOTrainer, whiten_over_ranks

    cfg = build_config(preset=None, base_file=run_dir / "config.yaml", overrides={
        "ppo.rollout_prompts": 4, "ppo.minibatch_size": 2, "ppo.epochs": 1, "ppo.max_new_tokens": 8,
        "ppo.train.grad_accum_steps": 2, "ppo.train.precision": "fp32", "ppo.train.max_steps": 1,
        "ppo.eval_prompts": 0, "ppo.advantage": "gae", "ppo.samples_per_prompt": 1, "ppo.trainable": "all",
        "ppo.entropy_coef": 0.0, "ppo.entropy_rows": "all"})
    trainer = PPOTrainer(cfg, run_dir, show_progress=False)
    record = trainer.iterate()
    rows = torch.arange(16, dtype=torch.float32).reshape(4, 4) ** 1.5
    mask = (torch.arange(16).reshape(4, 4) % 3 != 0).float()
    share = slice(2 * distributed.rank(), 2 * distributed.rank() + 2)
    _save(out, "ppo", policy=trainer.policy.state_dict(), value=trainer.value.state_dict(), record=record,
          prompts=[repr(p) for p in trainer._prompt_batch()],
          whitened=whiten_over_ranks(rows[share], mask[share]), whiten_input=(rows, mask))


def cli_scenarios(spec: dict) -> None:
    from picochat.cli.main import main

    _save(Path(spec["out"]), "pipeline", rc=main(spec["pipeline_argv"]))
    _save(Path(spec["out"]), "rm_dpo", rc=main(spec["rm_dpo_argv"]))


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    assert distributed.init() and distributed.world_size() == 2
    torch.set_num_threads(1)
    out, run_dir = Path(spec["out"]), Path(spec["run_dir"])
    trainer_scenarios(out, run_dir)
    ppo_scenario(out, run_dir)
    cli_scenarios(spec)
    distributed.teardown()
