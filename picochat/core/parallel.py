"""Data parallelism for the training loop: DDP or FSDP2, and whole (unsharded) checkpoints.

`train.parallel=ddp` (default) keeps a full copy of the model, gradients and AdamW state on every
process and all-reduces gradients once per optimizer step. `train.parallel=fsdp` shards parameters,
gradients and optimizer state across processes (FSDP2 `fully_shard`, one unit per transformer
block plus the root for embeddings, final norm and head): about 16 bytes per parameter of training
state are split N ways, at the cost of gathering each block's weights for its forward and backward.

Checkpoints are always written whole, by rank 0, in the single-process format (plain state dicts,
AdamW state keyed by parameter index), so any checkpoint resumes with any number of processes and
either mode, and every later stage reads it like any other model directory.
"""

from __future__ import annotations

import contextlib

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from picochat.core import distributed

MODES = ("ddp", "fsdp")


def wrap(model: torch.nn.Module, mode: str, device: torch.device) -> torch.nn.Module:
    """The module the training step calls: `model` itself in one process, DDP around it, or
    `model` sharded in place by FSDP2 (its parameters become DTensor shards)."""
    if distributed.world_size() == 1:
        return model
    if mode == "fsdp":
        for block in model.model.layers:
            fully_shard(block)
        fully_shard(model)  # the root: embeddings, final norm, head (a tied head stays with its embedding)
        return model

    # Buffers are the RoPE tables, identical everywhere: no need to broadcast them every forward.
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def gradient_sync(wrapped: torch.nn.Module, enabled: bool):
    """Context for one micro-step: gradients are reduced across processes only when `enabled`
    (the last micro-step of an optimizer step); before that they accumulate locally."""
    if enabled:
        return contextlib.nullcontext()
    if hasattr(wrapped, "no_sync"):  # DDP
        return wrapped.no_sync()
    if is_sharded(wrapped):
        return _fsdp_no_sync(wrapped)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def as_float(x: torch.Tensor) -> float:
    """A scalar that may be a replicated DTensor (e.g. FSDP's total grad norm)."""
    return float(x.full_tensor() if isinstance(x, DTensor) else x)


# -- whole checkpoints from shards ---------------------------------------------------------------


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict | None]:
    """(model state dict, optimizer state dict) whole, on CPU, on rank 0 (empty dicts elsewhere).
    A collective for a sharded model: every rank must call it."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=options)
    if optimizer is None:
        return model_sd, None
    optim_sd = get_optimizer_state_dict(model, optimizer, options=options)
    return model_sd, _indexed_optimizer_state(optim_sd) if distributed.is_main() else {}


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict, optim_sd: dict) -> None:
    """Load whole state dicts (every rank passes the same ones) into a sharded model and its optimizer."""
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_sd, options=options)
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    set_optimizer_state_dict(model, optimizer, _named_optimizer_state(optim_sd, order), options=options)


def _indexed_optimizer_state(named: dict) -> dict:
    """torch.distributed.checkpoint's optimizer state (keyed by parameter name) in the format of
    `optimizer.state_dict()` (keyed by the parameter's index across param groups)."""
    index: dict[str, int] = {}
    groups = []
    for g in named["param_groups"]:
        ids = []
        for name in g["params"]:
            index.setdefault(name, len(index))
            ids.append(index[name])
        groups.append({**g, "params": ids})
    return {"state": {index[n]: s for n, s in named["state"].items()}, "param_groups": groups}


def _named_optimizer_state(indexed: dict, order: list[str]) -> dict:
    """The inverse of `_indexed_optimizer_state`, given the parameter names in index order."""
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in indexed["param_groups"]]
    return {"state": {order[int(i)]: s for i, s in indexed["state"].items()}, "param_groups": groups}
