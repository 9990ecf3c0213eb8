"""The shared training loop: loss falls, exact resume after Ctrl-C, schedules, checkpoints."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from picochat.algos.schedule import lr_at
from picochat.config import TrainConfig
from picochat.core.checkpoint import load_model_dir
from picochat.core.io import MetricsLog
from picochat.core.model import GPT, ModelConfig, lm_loss
from picochat.train.pretrain import make_evaluator, random_windows
from picochat.train.trainer import Trainer

SEQ = 64


def _tiny_model(vocab_size: int) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                           ffn_hidden=160, max_seq_len=SEQ))


def _trainer(tmp_path, shards, tokenizer, cfg: TrainConfig, get_batch=None) -> Trainer:
    train, val, meta = shards
    tok_file = tokenizer.save(tmp_path / "tok")
    model = _tiny_model(64 * ((tokenizer.vocab_size + 63) // 64))
    return Trainer(
        model, cfg, tmp_path / "stage",
        get_batch=get_batch or (lambda s, m: random_windows(train, SEQ, cfg.batch_size, cfg.seed, s, m)),
        loss_fn=lambda mdl, b: lm_loss(mdl(b["input_ids"]), b["targets"]),
        evaluate=make_evaluator(val, meta, SEQ, cfg.batch_size, 4),
        tokenizer_file=tok_file, stage="test", show_progress=False,
    )


def test_loss_falls_well_below_initial_on_world_corpus(tmp_path, world_shards, world_tokenizer):
    cfg = TrainConfig(max_steps=80, batch_size=8, lr=3e-3, lr_warmup_steps=10, eval_every=0, log_every=10,
                      ckpt_every=0, precision="fp32")
    trainer = _trainer(tmp_path, world_shards, world_tokenizer, cfg)
    initial = trainer.evaluate()["val_loss"]
    result = trainer.fit()
    final = result.eval_metrics["val_loss"]
    assert initial > 5.5  # ≈ ln(vocab) at initialisation
    assert final < initial - 2.5, (initial, final)
    assert result.eval_metrics["val_bpb"] > 0
    log = MetricsLog(tmp_path / "stage" / "metrics.jsonl").read()
    assert [r["step"] for r in log] == list(range(10, 81, 10))
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in log)
    # The final checkpoint is a loadable model directory with the trained weights.
    model, meta = load_model_dir(tmp_path / "stage")
    assert meta["step"] == 80
    for (n, a), b in zip(model.state_dict().items(), trainer.model.state_dict().values()):
        assert torch.equal(a, b), n


def test_ctrl_c_then_resume_reproduces_uninterrupted_losses(tmp_path, world_shards, world_tokenizer):
    cfg = TrainConfig(max_steps=10, batch_size=4, lr=3e-3, lr_warmup_steps=3, eval_every=0, log_every=1,
                      ckpt_every=0, precision="fp32")
    train = world_shards[0]
    full = _trainer(tmp_path / "full", world_shards, world_tokenizer, cfg).fit()
    full_log = MetricsLog(tmp_path / "full" / "stage" / "metrics.jsonl").read()

    def batch_with_ctrl_c(step, micro):
        if step == 6:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered during step 6
        return random_windows(train, SEQ, cfg.batch_size, cfg.seed, step, micro)

    first = _trainer(tmp_path / "resumed", world_shards, world_tokenizer, cfg, batch_with_ctrl_c).fit()
    assert first.interrupted and first.step == 7  # the step in flight finishes, then it stops
    second = _trainer(tmp_path / "resumed", world_shards, world_tokenizer, cfg).fit()
    assert not second.interrupted and second.step == 10
    resumed_log = MetricsLog(tmp_path / "resumed" / "stage" / "metrics.jsonl").read()
    assert [r["step"] for r in resumed_log] == [r["step"] for r in full_log]
    assert [r["loss"] for r in resumed_log] == [r["loss"] for r in full_log]
    assert second.eval_metrics["val_loss"] == full.eval_metrics["val_loss"]


def test_compiled_training_resumes_exactly_and_tracks_eager(tmp_path, world_shards, world_tokenizer):
    """train.compile=true: a run killed after step 3 and resumed ends with the uninterrupted run's
    losses and weights bit for bit; the compiled losses follow eager's to fp32 rounding. On 2
    threads, as the demo trains: inductor's atomic adds in the embedding's backward made such runs
    part ways (picochat.train.compiled.DeterministicKernels)."""
    cfg = TrainConfig(max_steps=6, batch_size=4, lr=3e-3, lr_warmup_steps=2, eval_every=0, log_every=1,
                      ckpt_every=3, precision="fp32", compile=True, threads=2)
    full = _trainer(tmp_path / "full", world_shards, world_tokenizer, cfg)
    assert not full.compute_loss.failed
    full.fit()
    assert full.compute_loss.first_call_done and not full.compute_loss.failed
    assert not torch.are_deterministic_algorithms_enabled()  # the process's setting again after training
    first = TrainConfig(**{**cfg.__dict__, "max_steps": 3})
    _trainer(tmp_path / "resumed", world_shards, world_tokenizer, first).fit()
    resumed = _trainer(tmp_path / "resumed", world_shards, world_tokenizer, cfg)
    assert resumed.try_resume() and resumed.step == 3
    resumed.fit()
    losses = [r["loss"] for r in MetricsLog(tmp_path / "full" / "stage" / "metrics.jsonl").read()]
    assert [r["loss"] for r in MetricsLog(tmp_path / "resumed" / "stage" / "metrics.jsonl").read()] == losses
    for (n, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), n
    eager = _trainer(tmp_path / "eager", world_shards, world_tokenizer,
                     TrainConfig(**{**cfg.__dict__, "compile": False}))
    eager.fit()
    eager_losses = [r["loss"] for r in MetricsLog(tmp_path / "eager" / "stage" / "metrics.jsonl").read()]
    assert losses == pytest.approx(eager_losses, rel=1e-4)


def test_a_compiler_failure_falls_back_to_eager(tmp_path, world_shards, world_tokenizer, monkeypatch):
    def broken_compile(fn, *args, **kwargs):
        def call(*a, **k):
            raise RuntimeError("no C++ compiler found")
        return call
    monkeypatch.setattr(torch, "compile", broken_compile)
    cfg = TrainConfig(max_steps=3, batch_size=2, eval_every=0, log_every=1, ckpt_every=0, precision="fp32",
                      compile=True)
    messages = []
    trainer = _trainer(tmp_path, world_shards, world_tokenizer, cfg)
    trainer.compute_loss.log = messages.append
    result = trainer.fit()
    assert result.step == 3 and trainer.compute_loss.failed
    assert len(messages) == 1 and "no C++ compiler found" in messages[0] and "uncompiled" in messages[0]
    eager = _trainer(tmp_path / "eager", world_shards, world_tokenizer,
                     TrainConfig(**{**cfg.__dict__, "compile": False}))
    eager.fit()
    for a, b in zip(trainer.model.parameters(), eager.model.parameters()):
        assert torch.equal(a, b)


def test_an_error_of_the_step_itself_is_not_blamed_on_the_compiler(tmp_path, world_shards, world_tokenizer,
                                                                   monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, *a, **k: fn)  # compiled = eager: both fail alike
    cfg = TrainConfig(max_steps=2, batch_size=2, eval_every=0, log_every=1, ckpt_every=0, precision="fp32",
                      compile=True)
    trainer = _trainer(tmp_path, world_shards, world_tokenizer, cfg, get_batch=lambda s, m: {"wrong_key": None})
    messages = []
    trainer.compute_loss.log = messages.append
    with pytest.raises(KeyError, match="input_ids"):
        trainer.fit()
    assert messages == [] and not trainer.compute_loss.failed


def test_resume_drops_log_records_written_after_the_checkpoint(tmp_path, world_shards, world_tokenizer):
    cfg = TrainConfig(max_steps=6, batch_size=2, eval_every=0, log_every=1, ckpt_every=3, precision="fp32")
    _trainer(tmp_path, world_shards, world_tokenizer, cfg).fit()
    # Pretend the process died after logging step 6 but with only the step-3 checkpoint on disk.
    trainer = _trainer(tmp_path, world_shards, world_tokenizer, cfg)
    state_path = tmp_path / "stage" / "checkpoint" / "trainer_state.pt"
    state = torch.load(state_path, weights_only=True)
    state["step"] = 3
    torch.save(state, state_path)
    assert trainer.try_resume() and trainer.step == 3
    assert [r["step"] for r in trainer.metrics.read()] == [1, 2, 3]


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_lr_schedules_warm_up_then_decay_to_floor(schedule):
    cfg = TrainConfig(max_steps=100, lr=1.0, min_lr_ratio=0.1, lr_warmup_steps=10, schedule=schedule)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b + 1e-12 for a, b in zip(lrs[:10], lrs[1:10]))  # warmup rises
    if schedule == "constant":
        assert lrs[-1] == 1.0
    else:
        assert all(a >= b - 1e-12 for a, b in zip(lrs[10:], lrs[11:]))  # then never rises
        assert lrs[-1] == pytest.approx(0.1, abs=0.02)
    if schedule == "wsd":
        assert lrs[50] == 1.0  # stable phase holds the peak


def test_non_finite_loss_stops_with_a_clear_error(tmp_path, world_shards, world_tokenizer):
    cfg = TrainConfig(max_steps=3, batch_size=2, eval_every=0, log_every=1, ckpt_every=0, precision="fp32")
    trainer = _trainer(tmp_path, world_shards, world_tokenizer, cfg)
    trainer.loss_fn = lambda m, b: lm_loss(m(b["input_ids"]), b["targets"]) * float("nan")
    with pytest.raises(FloatingPointError, match="loss is nan at step 0"):
        trainer.fit()
