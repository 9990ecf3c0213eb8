"""torchrun with 2 processes (gloo on CPU) against 1 process: the same examples, losses and weights.

One torchrun job (tests/distributed_worker.py) runs every two-process scenario; the tests here
run the single-process counterparts and compare. fp32 throughout, so "the same" means equal up
to the order of floating-point sums.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY
from distributed_worker import make_trainer, train_config
from safetensors.torch import load_file

from picochat.algos.ppo import masked_whiten
from picochat.cli.main import main
from picochat.core.io import MetricsLog

TESTS = Path(__file__).parent
# Adam divides by the root of the squared-gradient average, so a weight whose gradient is ~0
# can move a visible fraction of lr (3e-3) on float noise alone: 1e-4 is a few % of one step.
CLOSE = dict(rtol=1e-4, atol=1e-4)


def pipeline_overrides(batch_size: int) -> list[str]:
    """A few fp32 steps of pretraining and SFT; `batch_size` per process."""
    out = []
    for stage in ("pretrain", "sft"):
        out += [f"{stage}.train.max_steps=4", f"{stage}.train.batch_size={batch_size}", f"{stage}.train.precision=fp32",
                f"{stage}.train.log_every=1", f"{stage}.train.eval_every=2", f"{stage}.train.ckpt_every=2"]
    return out + ["pretrain.sample.max_new_tokens=4", "sft.eval_prompts=0"]


@pytest.fixture(scope="module")
def job(run_dir, tmp_path_factory):
    """Run tests/distributed_worker.py under torchrun once; its outputs are in the returned dir."""
    root = tmp_path_factory.mktemp("distributed")
    shutil.copytree(run_dir, root / "run")  # the job writes into the run (rm, dpo): a copy
    (root / "results").mkdir()
    spec = {
        "out": str(root / "results"),
        "run_dir": str(root / "run"),
        "pipeline_argv": ["run", "--out", str(root / "pipeline"), "--no-progress",
                          "--stages", "world,tokenizer,pretrain,sft", *TINY, *pipeline_overrides(4)],
        "rm_dpo_argv": ["run", "--out", str(root / "run"), "--no-progress", "--stages", "rm,dpo",
                        "rm.train.max_steps=3", "rm.train.batch_size=2", "dpo.train.max_steps=2",
                        "dpo.train.batch_size=2", "dpo.eval_prompts=0"],
    }
    (root / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(TESTS / "distributed_worker.py"), str(root / "spec.json")],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return root


def result(job: Path, scenario: str, rank: int) -> dict:
    return torch.load(job / "results" / f"{scenario}.rank{rank}.pt", weights_only=False)


def losses(stage_dir: Path) -> dict[int, float]:
    records = MetricsLog(stage_dir / "metrics.jsonl").read()
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"{stage_dir}: steps logged twice {steps}"  # rank 0 alone writes
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        torch.testing.assert_close(tensor, b[name], **CLOSE, msg=lambda m, name=name: f"{name}: {m}")


def test_pretrain_and_sft_on_two_processes_match_one_process_with_twice_the_batch(job, run_dir, tmp_path):
    two = job / "pipeline"
    assert result(job, "pipeline", 0)["rc"] == 0 and result(job, "pipeline", 1)["rc"] == 0
    # world and tokenizer ran on rank 0 alone, as one process would have run them
    for f in ("world/world.json", "tokenizer/tokenizer.json"):
        assert (two / f).read_bytes() == (run_dir / f).read_bytes(), f
    one = tmp_path / "one"
    one.mkdir()
    for part in ("world", "tokenizer", "config.yaml"):
        (shutil.copytree if (two / part).is_dir() else shutil.copy)(two / part, one / part)
    assert main(["run", "--out", str(one), "--no-progress", "--stages", "pretrain,sft", *TINY,
                 *pipeline_overrides(8)]) == 0
    for stage in ("pretrain", "sft"):
        summary = json.loads((two / stage / "summary.json").read_text())
        assert summary["processes"] == 2 and summary["steps"] == 4
        l1, l2 = losses(one / stage), losses(two / stage)
        assert sorted(l2) == [1, 2, 3, 4]
        assert l2 == pytest.approx(l1, rel=1e-5), stage
        # validation is sharded over the processes: the same held-out examples in both runs
        assert summary["val_loss"] == pytest.approx(json.loads((one / stage / "summary.json").read_text())["val_loss"],
                                                    rel=1e-5)
        assert_same_weights(load_file(str(two / stage / "model.safetensors")),
                            load_file(str(one / stage / "model.safetensors")))


def test_gradient_accumulation_all_reduces_once_per_step_and_matches_one_process(job, run_dir, tmp_path):
    r0, r1 = result(job, "ddp_accum2", 0), result(job, "ddp_accum2", 1)
    # no_sync on the first micro-step: as many gradient all-reduces as without accumulation
    assert r0["allreduce_calls"] == result(job, "ddp_accum1", 0)["allreduce_calls"] > 0
    for k in r0["weights"]:
        assert torch.equal(r0["weights"][k], r1["weights"][k]), k  # the ranks stay identical
    reference = make_trainer(tmp_path / "one", run_dir, train_config(grad_accum_steps=2, batch_size=4))
    one = reference.fit()
    assert losses(job / "results" / "ddp_accum2") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    assert_same_weights(r0["weights"], reference.model.state_dict())
    assert r0["val_loss"]["val_loss"] == pytest.approx(one.eval_metrics["val_loss"], rel=1e-5)


def test_fsdp2_on_gloo_trains_like_ddp(job):
    fsdp, ddp = result(job, "fsdp_accum2", 0), result(job, "ddp_accum2", 0)
    assert fsdp["sharded"] and result(job, "fsdp_accum2", 1)["weights"] is None  # whole model on rank 0 only
    assert_same_weights(fsdp["weights"], ddp["weights"])
    assert losses(job / "results" / "fsdp_accum2") == pytest.approx(losses(job / "results" / "ddp_accum2"), rel=1e-5)
    assert fsdp["val_loss"]["val_loss"] == pytest.approx(ddp["val_loss"]["val_loss"], rel=1e-5)


def test_checkpoint_of_two_processes_resumes_in_one_and_under_fsdp(job, run_dir, tmp_path):
    # Ctrl-C reached rank 0 only, during step 2: both ranks finished that step and stopped.
    for rank in (0, 1):
        r = result(job, "interrupted", rank)
        assert r["interrupted"] and r["step"] == 2
    shutil.copytree(job / "results" / "interrupted", tmp_path / "resumed")
    resumed = make_trainer(tmp_path / "resumed", run_dir, train_config(max_steps=6, batch_size=4))
    assert resumed.fit().step == 6
    reference = make_trainer(tmp_path / "one", run_dir, train_config(max_steps=6, batch_size=4))
    reference.fit()
    assert losses(tmp_path / "resumed") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    assert_same_weights(resumed.model.state_dict(), reference.model.state_dict())
    fsdp = result(job, "fsdp_resume", 0)
    assert fsdp["step"] == 6
    assert_same_weights(fsdp["weights"], reference.model.state_dict())


def test_ppo_iteration_on_two_processes_keeps_their_weights_equal(job, run_dir):
    p0, p1 = result(job, "ppo", 0), result(job, "ppo", 1)
    assert set(p0["prompts"]).isdisjoint(p1["prompts"])  # each rolled out its own share
    sft = load_file(str(run_dir / "sft" / "model.safetensors"))
    assert any(not torch.equal(p0["policy"][k], sft[k]) for k in sft)  # the update moved the policy
    for part in ("policy", "value"):
        for k in p0[part]:
            assert torch.equal(p0[part][k], p1[part][k]), (part, k)
    assert p0["record"] == p1["record"]  # metrics reduced over both ranks
    rows, mask = p0["whiten_input"]
    torch.testing.assert_close(torch.cat([p0["whitened"], p1["whitened"]]), masked_whiten(rows, mask))


def test_reward_model_and_dpo_run_under_torchrun(job):
    assert result(job, "rm_dpo", 0)["rc"] == 0 and result(job, "rm_dpo", 1)["rc"] == 0
    for stage, steps in (("rm", 3), ("dpo", 2)):
        summary = json.loads((job / "run" / stage / "summary.json").read_text())
        assert summary["processes"] == 2 and summary["steps"] == steps
        assert max(losses(job / "run" / stage)) == steps
        assert (job / "run" / stage / "model.safetensors").exists()
