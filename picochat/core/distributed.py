"""Several processes with torchrun: the process group, who is who, and the few things they share.

`torchrun --nproc_per_node=N -m picochat <stage>` starts N copies of the CLI; each finds its place
in the RANK / WORLD_SIZE / LOCAL_RANK variables torchrun sets. Without torchrun (or with one
process) no process group is started and every helper here is a no-op that returns at once, so a
single-process run does exactly what it did before, at no cost.

Roles: every rank trains (DDP or FSDP2, `picochat.core.parallel`); rank 0 alone writes files
(checkpoints, metrics.jsonl, summary.json), logs, and runs the work that is not distributed
(world, tokenizer, labeling, the evaluations after training) while the others wait at `barrier()`.
All ranks must see the run directory (one machine, or a shared filesystem across machines).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys

import torch
import torch.distributed as dist

# How long ranks wait at a barrier while rank 0 works alone (tokenizer training on a big corpus,
# labeling, evaluations); the training collectives keep torch's default timeout.
WAIT_TIMEOUT = datetime.timedelta(hours=float(os.environ.get("PICOCHAT_DIST_WAIT_HOURS", "24")))

_wait_group = None  # a gloo group for barriers: CPU-side, long timeout, no GPU stream held


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> bool:
    """Join the process group torchrun describes: NCCL with one GPU per process (cuda:LOCAL_RANK)
    when CUDA is available, else gloo on CPU. Returns whether this is a distributed run."""
    global _wait_group
    if is_distributed() or not launched_by_torchrun():
        return is_distributed()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    _wait_group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    return True


@contextlib.contextmanager
def session():
    """The block runs as one process of torchrun's job when torchrun started us (else as the only
    process): the process group is joined first and left afterwards, and the standard output of
    ranks other than 0 is silenced, so each log line appears once."""
    joined_here = not is_distributed()
    if not init():
        yield
        return
    try:
        with open(os.devnull, "w") as devnull, \
                contextlib.redirect_stdout(devnull if not is_main() else sys.stdout):
            yield
    finally:
        if joined_here:
            teardown()


def teardown() -> None:
    global _wait_group
    if is_distributed():
        dist.destroy_process_group()
    _wait_group = None


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """This process's device: cuda:LOCAL_RANK under torchrun, cuda without it, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank()) if "LOCAL_RANK" in os.environ else torch.device("cuda")
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every rank gets here (e.g. until rank 0 has written files the others read)."""
    if is_distributed():
        dist.barrier(group=_wait_group)


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the block first, the others wait and then run it (to reuse what rank 0 built,
    such as token shards, instead of racing to write the same files)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(values: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """`values` reduced over ranks (op: sum | max), on the caller's device and dtype."""
    if not is_distributed():
        return values
    reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
    buf = values.detach().to(_comm_device(), torch.float64).clone()
    dist.all_reduce(buf, op=reduce_op)
    return buf.to(values.device, values.dtype)


def sum_over_ranks(values: list[float]) -> list[float]:
    """Python floats summed over ranks (float64), e.g. loss sums and token counts."""
    if not is_distributed():
        return list(values)
    return all_reduce(torch.tensor(values, dtype=torch.float64)).tolist()


def reduce_metrics(record: dict, sum_keys: tuple[str, ...] = (), max_keys: tuple[str, ...] = ()) -> dict:
    """A metrics record as the whole job sees it: float values averaged over ranks (every rank
    holds an equal share of the batch), except `sum_keys` (e.g. throughput) and `max_keys` (e.g.
    seconds); integers (step counters) are the same everywhere and stay as they are."""
    if not is_distributed():
        return record
    keys = sorted(k for k, v in record.items() if isinstance(v, float))
    values = torch.tensor([float(record[k]) for k in keys], dtype=torch.float64)
    summed = all_reduce(values).tolist()
    maxed = all_reduce(values, op="max").tolist() if max_keys else summed
    out = dict(record)
    n = world_size()
    for k, s, m in zip(keys, summed, maxed):
        out[k] = m if k in max_keys else s if k in sum_keys else s / n
    return out


def rank_share(global_items, per_rank: int, rank_: int):
    """Rank `rank_`'s `per_rank` consecutive items of a global batch of `per_rank × world_size` items.

    Every batch function draws the global batch from one generator seeded by (seed, step, micro),
    the same on all ranks, and keeps its share: so N processes with batch b see exactly the
    examples that one process with batch N·b sees.
    """
    return global_items[rank_ * per_rank : (rank_ + 1) * per_rank]


def rank_seed(seed: int, rank_: int | None = None) -> int:
    """A sampling seed of its own for each rank (rank 0 keeps `seed`, so one process is unchanged)."""
    r = rank() if rank_ is None else rank_
    return seed + 1_000_003 * r
