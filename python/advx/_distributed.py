"""evaluate() inside a torch.distributed process group: each rank takes a contiguous
shard of the dataset, and the per-sample results are gathered to every rank in dataset
order. Samples draw their randomness from their dataset index (advx._rng), so the
gathered result equals a one-process run's whatever the number of ranks."""
from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Subset


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside an initialized process group."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(loader: DataLoader, rank: int, size: int) -> tuple[DataLoader, int]:
    """This rank's part of the loader's dataset, as a loader with the same batch size and
    collation, and the dataset index of its first sample."""
    n = len(loader.dataset)
    lo, hi = n * rank // size, n * (rank + 1) // size
    part = DataLoader(Subset(loader.dataset, range(lo, hi)), batch_size=loader.batch_size or 1, shuffle=False,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)
    return part, lo


def gather(parts: list) -> list:
    """Every rank's ``parts`` (CPU tensors and numbers), concatenated in rank order."""
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, parts)
    return out


def finish():
    """Wait for every rank, then destroy the default group. A rank that exits while
    others still hold gloo connections to it can abort them at interpreter exit
    ("terminate called without an active exception"), so the CLI ends through here."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def init_from_env():
    """Under torchrun (WORLD_SIZE > 1 in the environment) and no group yet: initialize the
    default group, NCCL when CUDA is available (one GPU per rank, LOCAL_RANK) and gloo on
    CPUs. Returns the rank's device, or None when not launched by torchrun."""
    dist = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return None
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")
