"""The one training loop that pretraining, SFT, the reward model and DPO share.

A stage supplies three things: `get_batch(step, micro_step) -> dict of tensors` (a pure function of
the step, which is what makes resume exact), `loss_fn(model, batch) -> scalar loss`, and optionally
`evaluate(model) -> dict of metrics`. The trainer owns everything else: optimizer, schedule,
gradient accumulation, clipping, mixed precision, logging, checkpoints, Ctrl-C and resume.

Under torchrun the same loop runs in every process (`picochat.core.distributed`): the model is wrapped
in DDP or sharded with FSDP2 (`train.parallel`), each process computes the loss on its share of
the global batch (the stage's `get_batch` draws it), gradients are reduced once per optimizer step
(micro-steps before the last skip the reduction), and rank 0 alone logs and writes checkpoints.
Optionally `loss_weight(batch)` says how many items (e.g. target tokens) a micro-batch's mean loss
averages over; the step's loss is then the mean over all items of all micro-batches of all
processes, exactly what one process would compute on the whole batch. Without it, micro-batches
weigh the same.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from picochat.algos.schedule import lr_at
from picochat.config import TrainConfig
from picochat.core import distributed, parallel
from picochat.core.checkpoint import load_checkpoint_state, load_weights, save_checkpoint
from picochat.core.io import MetricsLog
from picochat.core.model import GPT
from picochat.core.precision import autocast, measured_matmul_peak_flops, peak_memory_bytes, resolve_precision
from picochat.train.compiled import CompiledCall, DeterministicKernels
from picochat.train.contention import StepTimeWatch

Batch = dict[str, torch.Tensor]


class GracefulInterrupt:
    """The first Ctrl-C (SIGINT) asks the loop to stop after the current step, so the checkpoint
    it then saves is consistent (never mid optimizer step); a second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("stopping after this step and saving a checkpoint (Ctrl-C again to abort now)")

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class TrainResult:
    step: int
    interrupted: bool
    final_train_loss: float
    eval_metrics: dict = field(default_factory=dict)
    tokens: int = 0
    wall_s: float = 0.0
    tokens_per_s: float = 0.0
    mfu: float = 0.0
    peak_memory_mb: float = 0.0
    precision: str = "fp32"
    processes: int = 1  # under torchrun: tokens and tokens_per_s are totals over them, mfu per device

    def figures(self) -> dict:
        """The headline figures every training stage puts in its summary.json."""
        return {
            **({"processes": self.processes} if self.processes > 1 else {}),
            "steps": self.step,
            "tokens": self.tokens,
            "final_train_loss": self.final_train_loss,
            "tokens_per_s": self.tokens_per_s,
            "mfu": self.mfu,
            "precision": self.precision,
            "peak_memory_mb": self.peak_memory_mb,
            "train_wall_s": self.wall_s,
        }


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norm gains), fused where available."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # One fused kernel per parameter group instead of ~a dozen foreach ops over every tensor: on a
    # 2-core CPU the foreach AdamW took ~20% of a tiny-preset step (PyTorch >= 2.4 fuses on CPU).
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


class _Throughput:
    """Tokens per second and MFU of this run (since fit() started) and of the current log window
    (since the last log line or evaluation)."""

    def __init__(self, flops_per_token: float, peak_flops: float):
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.t_start = self.t_window = time.perf_counter()
        self.run_tokens = self.window_tokens = 0

    def add(self, tokens: int) -> None:
        self.run_tokens += tokens
        self.window_tokens += tokens

    def restart_window(self) -> None:
        self.t_window, self.window_tokens = time.perf_counter(), 0

    def window_tokens_per_s(self) -> float:
        dt = time.perf_counter() - self.t_window
        return self.window_tokens / dt if dt > 0 else 0.0

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.t_start

    def mfu(self, tokens_per_s: float) -> float:
        return tokens_per_s * self.flops_per_token / self.peak_flops


class Trainer:
    def __init__(
        self,
        model: GPT,
        cfg: TrainConfig,
        out_dir: Path,
        *,
        get_batch: Callable[[int, int], Batch],
        loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor],
        tokenizer_file: Path,
        evaluate: Callable[[torch.nn.Module], dict] | None = None,
        device: torch.device | None = None,
        stage: str = "train",
        show_progress: bool = True,
        loss_weight: Callable[[Batch], float] | None = None,
    ):
        cfg.validate()
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.get_batch = get_batch
        self.loss_fn = loss_fn
        self.evaluate_fn = evaluate
        self.loss_weight = loss_weight
        self.tokenizer_file = Path(tokenizer_file)
        self.device = device or torch.device("cpu")
        self.stage = stage
        self.world_size = distributed.world_size()
        self.is_main = distributed.is_main()
        self.show_progress = show_progress and self.is_main
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.model = model.to(self.device)
        # DDP wraps the model; FSDP2 shards it in place, so the optimizer is built afterwards.
        self.wrapped = parallel.wrap(self.model, cfg.parallel, self.device)
        self.sharded = parallel.is_sharded(self.wrapped)
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        self.compute_loss = self._loss_function(stage)  # batch -> loss; evaluation runs the model uncompiled
        self.metrics = MetricsLog(self.out_dir / "metrics.jsonl")
        self.step = 0
        self.loss_window: list[float] = []  # losses since the last log line (saved for exact resume)
        self.tokens_seen = 0  # over all processes
        self.tb = self._tensorboard() if cfg.tensorboard and self.is_main else None

    def _loss_function(self, stage: str) -> Callable[[Batch], torch.Tensor]:
        """The stage's loss of a batch through the training model; with train.compile, compiled
        (picochat.train.compiled says what and why)."""
        def loss_of(batch: Batch) -> torch.Tensor:
            return self.loss_fn(self.wrapped, batch)

        if not self.cfg.compile:
            return loss_of
        if self.world_size > 1:
            compiled_model = torch.compile(self.wrapped)
            return CompiledCall(loss_of, lambda batch: self.loss_fn(compiled_model, batch), label=stage,
                                log=tqdm.write if self.is_main else lambda message: None)
        return CompiledCall(loss_of, torch.compile(loss_of), label=stage)

    # -- checkpoints -------------------------------------------------------------------------

    def _state(self, optimizer_state: dict) -> dict:
        state = {
            "step": self.step,
            "optimizer": optimizer_state,
            "torch_rng": torch.get_rng_state(),
            "loss_window": torch.tensor(self.loss_window, dtype=torch.float64),
            "tokens_seen": self.tokens_seen,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def save(self) -> None:
        """Rank 0 writes the checkpoint, whole (under FSDP every rank first helps gather it)."""
        if self.sharded:
            model_state, optimizer_state = parallel.full_state(self.model, self.optimizer)
            if not self.is_main:
                return
            model = self._plain_model(model_state)
        else:
            if not self.is_main:
                return
            model, optimizer_state = self.model, self.optimizer.state_dict()
        save_checkpoint(self.out_dir, model, self.tokenizer_file, self._state(optimizer_state), {"stage": self.stage})

    def _plain_model(self, state_dict: dict) -> GPT:
        model = GPT(self.model.cfg)
        model.load_state_dict(state_dict)
        return model

    def fit_to_end(self) -> tuple[TrainResult, GPT | None]:
        """fit(), then the whole trained model as full_model() gives it (None on ranks other than 0).
        An interrupted run (Ctrl-C, checkpoint saved) raises KeyboardInterrupt for the CLI to report."""
        result = self.fit()
        if result.interrupted:
            raise KeyboardInterrupt
        return result, self.full_model()

    def full_model(self) -> GPT | None:
        """The trained model, whole, on rank 0 (None on the other ranks), for what a stage does
        after training: final model directory, samples, evaluations. Under FSDP every rank must
        call it (the shards are gathered) and rank 0 then needs room for the whole model."""
        if self.sharded:
            model_state, _ = parallel.full_state(self.model, None)
            return self._plain_model(model_state).to(self.device) if self.is_main else None
        return self.model if self.is_main else None

    def try_resume(self) -> bool:
        """Load the latest checkpoint in out_dir, if any. Returns whether it resumed. Every rank
        reads the same whole checkpoint, whatever number of processes wrote it."""
        found = load_checkpoint_state(self.out_dir)
        if found is None:
            return False
        ckpt_dir, state = found
        if self.sharded:
            whole = GPT(self.model.cfg)
            load_weights(whole, ckpt_dir)
            parallel.load_full_state(self.model, self.optimizer, whole.state_dict(), state["optimizer"])
        else:
            load_weights(self.model, ckpt_dir)
            self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.step = int(state["step"])
        self.loss_window = [float(x) for x in state["loss_window"]]
        self.tokens_seen = int(state["tokens_seen"])
        if self.is_main:
            self.metrics.truncate_after(self.step)
        return True

    # -- evaluation and logging --------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict:
        """The stage's validation metrics. Under torchrun every process calls the evaluator (FSDP
        needs every process in every forward): it either scores its share of the validation set
        and all-reduces the sums (pretrain, SFT), or scores all of it (same weights, same numbers)."""
        if self.evaluate_fn is None:
            return {}
        self.model.eval()
        with autocast(self.precision, self.device):
            out = self.evaluate_fn(self.wrapped)
        self.model.train()
        return out

    def _tensorboard(self):
        try:  # imported here: an optional dependency, needed only with train.tensorboard=true
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError("train.tensorboard=true needs `pip install 'picochat[tensorboard]'`") from e
        return SummaryWriter(str(self.out_dir / "tensorboard"))

    def _log(self, record: dict, bar) -> None:
        self.metrics.write(record)
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{self.stage}/{k}", v, record["step"])
        parts = [f"step {record['step']:>6}"]
        for k in ("loss", "val_loss", "val_bpb", "lr", "grad_norm", "tokens_per_s", "mfu"):
            if k in record:
                v = record[k]
                parts.append(f"{k} {v:.3g}" if k != "tokens_per_s" else f"tok/s {v:,.0f}")
        (bar.write if bar is not None else print)(" | ".join(parts))

    # -- the loop ----------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train from the latest checkpoint (if any) to cfg.max_steps: one optimizer step at a time,
        a log line every log_every steps, an evaluation every eval_every, a checkpoint every
        ckpt_every and at the end. A Ctrl-C stops after the current step, with a checkpoint saved."""
        cfg = self.cfg
        if self.try_resume() and self.is_main:
            tqdm.write(f"[{self.stage}] resuming from step {self.step} (checkpoint in {self.out_dir})")
        meter = _Throughput(self.model.flops_per_token(self._seq_len_hint()),
                            measured_matmul_peak_flops(self.precision, self.device.type) * self.world_size)
        watch = StepTimeWatch(self.device)
        # Several processes wait for the slowest at every step, so a step time no longer tells a
        # process whether its own cores are contended (and torchrun sets one thread per process).
        watch.enabled = watch.enabled and self.world_size == 1
        self.model.train()
        bar = tqdm(
            total=cfg.max_steps, initial=self.step, desc=self.stage, unit="step",
            disable=not self.show_progress, dynamic_ncols=True,
        )
        eval_metrics: dict = {}
        stopping = False  # agreed by all processes, so they leave the loop at the same step
        last_loss = float("nan")
        stop = GracefulInterrupt()
        deterministic = DeterministicKernels(cfg.compile and self.device.type == "cpu")
        try:
            while self.step < cfg.max_steps and not stopping:
                t_step = time.perf_counter()
                lr, last_loss, grad_norm, step_tokens, stopping = self._optimizer_step(stop)
                meter.add(step_tokens)
                watch.observe(time.perf_counter() - t_step, self.step, bar)
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.3f}", refresh=False)
                is_last = self.step == cfg.max_steps
                record: dict = {}
                if self.step % cfg.log_every == 0 or is_last:
                    record = self._train_record(lr, grad_norm, meter)
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or is_last:
                    eval_metrics = self.evaluate()
                    record = {"step": self.step, **record, **eval_metrics}
                    meter.restart_window()  # evaluation time is not training throughput
                if record and self.is_main:
                    self._log(record, bar)
                if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or is_last or stopping:
                    self.save()
            if stopping and self.is_main:
                bar.write(f"[{self.stage}] interrupted at step {self.step}: checkpoint saved; "
                          "rerun the same command to resume")
        finally:
            deterministic.restore()
            stop.restore()
            watch.restore()
            bar.close()
            if self.tb is not None:
                self.tb.close()
        return self._result(stopping, last_loss, eval_metrics, meter)

    def _optimizer_step(self, stop: GracefulInterrupt) -> tuple[float, float, float, int, bool]:
        """One optimizer step at the scheduled learning rate: (lr, loss, grad norm before clipping,
        tokens, whether to stop after it). Raises FloatingPointError on a non-finite loss."""
        lr = lr_at(self.step, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, tokens, stopping = self._train_step(stop)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"[{self.stage}] loss is {loss} at step {self.step}; lower train.lr or use precision=fp32"
            )
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = parallel.as_float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.loss_window.append(loss)
        self.tokens_seen += tokens
        return lr, loss, grad_norm, tokens, stopping

    def _train_record(self, lr: float, grad_norm: float, meter: _Throughput) -> dict:
        """The metrics.jsonl record of a log step: the mean loss since the last one, and the
        throughput of the steps since then (the loss window and the meter's window restart)."""
        tokens_per_s = meter.window_tokens_per_s()
        record = {
            "step": self.step,
            "loss": sum(self.loss_window) / len(self.loss_window),
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": self.tokens_seen,
            "tokens_per_s": tokens_per_s,
            "mfu": meter.mfu(tokens_per_s),
            "elapsed_s": meter.elapsed_s(),
        }
        self.loss_window = []
        meter.restart_window()
        return record

    def _result(self, interrupted: bool, last_loss: float, eval_metrics: dict, meter: _Throughput) -> TrainResult:
        wall = meter.elapsed_s()
        tokens_per_s = meter.run_tokens / wall if wall > 0 else 0.0
        return TrainResult(
            step=self.step,
            interrupted=interrupted,
            final_train_loss=last_loss,
            eval_metrics=eval_metrics,
            tokens=self.tokens_seen,
            wall_s=wall,
            tokens_per_s=tokens_per_s,
            mfu=meter.mfu(tokens_per_s),
            peak_memory_mb=peak_memory_bytes(self.device) / 2**20,
            precision=self.precision,
            processes=self.world_size,
        )

    def _train_step(self, stop: GracefulInterrupt) -> tuple[float, int, bool]:
        """Forward and backward over the step's micro-batches, gradients reduced across processes
        once, at the last one. Returns (the step's loss, its tokens, whether to stop after it),
        all three agreed by every process."""
        accum = self.cfg.grad_accum_steps
        batches = [{k: v.to(self.device, non_blocking=True) for k, v in self.get_batch(self.step, micro).items()}
                   for micro in range(accum)]
        scales = self._loss_scales(batches)
        loss_sum, tokens = 0.0, 0
        for micro, batch in enumerate(batches):
            with parallel.gradient_sync(self.wrapped, enabled=micro == accum - 1):
                with autocast(self.precision, self.device):
                    loss = self.compute_loss(batch)
                (loss / accum if scales is None else loss * scales[micro]).backward()
            loss_sum += loss.item() if scales is None else loss.item() * scales[micro]
            # A stage whose rows are padded may say how many tokens are real ("n_tokens"), so that
            # tokens/s and MFU do not count padding.
            tokens += int(batch["n_tokens"]) if "n_tokens" in batch else batch["input_ids"].numel()
        local_loss = loss_sum / accum if scales is None else loss_sum  # with scales: world_size × this rank's share
        stop_requested = stop.requested  # a Ctrl-C during this step stops after it
        if self.world_size == 1:
            return local_loss, tokens, stop_requested
        # One small all-reduce: the global loss (processes weigh the same, see _loss_scales),
        # tokens, and whether any process got Ctrl-C.
        total_loss, total_tokens, stops = distributed.sum_over_ranks([local_loss, tokens, float(stop_requested)])
        return total_loss / self.world_size, int(total_tokens), stops > 0

    def _loss_scales(self, batches: list[Batch]) -> list[float] | None:
        """With `loss_weight`: each micro-batch's share of all the step's items (over all
        processes), times the number of processes (DDP and FSDP average gradients over them)."""
        if self.loss_weight is None:
            return None
        counts = [float(self.loss_weight(b)) for b in batches]
        total = distributed.sum_over_ranks([sum(counts)])[0]
        return [c * self.world_size / max(total, 1.0) for c in counts]

    def _seq_len_hint(self) -> int:
        probe = self.get_batch(self.step, 0)["input_ids"]
        return probe.shape[-1]
