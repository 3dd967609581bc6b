"""Multi-process training under torchrun: process group, data sharding, DDP wrapping
and the collectives the rest of freezetune needs.

DDP registers the parameters that require grad *when it is constructed*; a
parameter unfrozen later is never all-reduced and the replicas silently diverge
(Lightning #20340), and one frozen later is waited for forever ("Expected to have
finished reduction", pytorch#22049). So freezing is applied before wrapping, and
the model is wrapped again after every change of the trainable set
(freezetune.train.nets). A frozen parameter is never registered, so
``find_unused_parameters`` stays False.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from freezetune.record.integrity import tensor_bytes

__all__ = ["Dist", "ShardSampler", "from_env", "init", "parameter_digest", "shard_loaders", "shutdown"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun launch."""

    rank: int
    world: int
    local_rank: int
    backend: str = ""
    device: torch.device | None = None  # this rank's device, once it joined (init): overrides train.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run record."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        dist.barrier()

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """All-reduce a tensor by sum, in place; returns it."""
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is True on one (a Ctrl-C seen by one rank stops all)."""
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Every buffer (BatchNorm's running statistics) as rank 0 has it, on every rank. In train
        mode each rank updates its BatchNorm statistics from its own shard between DDP's
        broadcasts; a stage frozen now must be pinned with the same statistics everywhere."""
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def wrap(self, model: nn.Module, device: torch.device) -> DistributedDataParallel:
        """``model`` in DDP, registering the parameters that require grad now."""
        # The constructor broadcasts rank 0's parameters and buffers: every (re)wrap
        # starts the replicas from one state.
        ids = [device.index if device.index is not None else self.local_rank] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)


def from_env() -> Dist | None:
    """The launch torchrun describes in the environment, or None for a plain process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def init(d: Dist, device_kind: str) -> Dist:
    """Join the process group: NCCL for CUDA, gloo for CPU; returns ``d`` with its backend and
    this rank's device."""
    cuda = device_kind == "cuda" or (device_kind == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda else "gloo"
    device = torch.device("cuda", d.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    log.info("rank %d of %d (local %d): process group '%s', device %s", d.rank, d.world, d.local_rank, backend, device)
    return Dist(d.rank, d.world, d.local_rank, backend, device)


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


class ShardSampler(Sampler[int]):
    """Rank r evaluates samples r, r + world, ...: every sample exactly once over all
    ranks (DistributedSampler pads with repeats, which would count some twice)."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def shard_loaders(train: DataLoader, val: DataLoader, d: Dist, seed: int) -> tuple[DataLoader, DataLoader]:
    """Per-process loaders: the training set shuffled by DistributedSampler (seeded, reshuffled
    by ``set_epoch``), the validation set split without repeats. ``batch_size`` is per process."""
    n = len(train.dataset)  # type: ignore[arg-type]
    if n % d.world:
        log.warning(
            "%d training samples do not split evenly over %d processes: DistributedSampler repeats %d",
            n,
            d.world,
            d.world - n % d.world,
        )
    sampler = DistributedSampler(train.dataset, num_replicas=d.world, rank=d.rank, shuffle=True, seed=seed)
    kw = {"batch_size": train.batch_size, "num_workers": train.num_workers}
    return (
        DataLoader(train.dataset, sampler=sampler, **kw),
        DataLoader(val.dataset, sampler=ShardSampler(len(val.dataset), d.rank, d.world), **kw),  # type: ignore[arg-type]
    )


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 over every parameter's bytes: equal on all ranks iff the replicas agree."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(tensor_bytes(p))
    return h.hexdigest()
