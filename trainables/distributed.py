"""Data-parallel training of one runner over several processes (the workers of a Ray Train
trial, `search.resources.workers_per_trial`).

Every rank reads the same global batches (the feeder's order comes from the trial seed), trains
on its own slice, and the gradients are averaged over the ranks before each optimiser step, so N
workers take the steps one process would take on the whole batch (exactly so for networks
without BatchNorm; BatchNorm normalises each slice by its own statistics unless it is a
SyncBatchNorm, which torch offers on GPUs only). The optimisers then stay in step on every rank.
Per-sample augmentation draws come from a generator seeded by (trial seed, rank, epoch):
independent across ranks, the same on every rerun and after a resume.

The process group is the one Ray Train's TorchTrainer set up (NCCL on GPUs, gloo on CPUs), or any
other `torch.distributed` group.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DataParallel:
    rank: int
    world: int

    @classmethod
    def current(cls) -> "DataParallel":
        """The rank and size of the default process group."""
        return cls(dist.get_rank(), dist.get_world_size())

    def shard(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's contiguous slice of a global batch (the last ranks' may be shorter)."""
        per_rank = -(-len(labels) // self.world)
        part = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        return images[part], labels[part]

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Every gradient replaced by its mean over the ranks, in one all-reduce of a flat buffer."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def total(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of `value` over the ranks."""
        value = value.clone()
        dist.all_reduce(value)
        return value

    def broadcast(self, modules: Iterable[torch.nn.Module], buffers_only: bool = False) -> None:
        """Rank 0's parameters (unless `buffers_only`) and buffers (BatchNorm statistics) on every rank."""
        for module in modules:
            tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
            for tensor in tensors:
                dist.broadcast(tensor.data, src=0)

    def augmentation_seed(self, seed: int, epoch: int) -> int:
        """The seed of this rank's augmentation draws in `epoch`."""
        digest = hashlib.sha256(f"{seed}/{self.rank}/{epoch}".encode()).digest()
        return int.from_bytes(digest[:8], "little") % (2**63)


def sync_batchnorm(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """BatchNorm layers as SyncBatchNorm on accelerators (torch has no CPU SyncBatchNorm)."""
    if device.type == "cpu":
        return network
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
