"""sample_bits: the counter-based hash behind advx._rng's per-sample random numbers, one
fused op instead of some ninety tiny integer ops per draw."""
from __future__ import annotations

import torch

__all__ = ["sample_bits"]


def sample_bits(indices: torch.Tensor, draws: torch.Tensor, key: int, count: int) -> torch.Tensor:
    """[B, count] int64 hashes in [0, 2**32): element (b, j) depends only on ``key`` (an
    int in [0, 2**32)), ``indices[b]`` and ``draws[b]`` (int64, [B] each, read as their
    64 and low 32 bits) and ``j``. The same bits on every device and for every batch:
    advx._rng turns them into uniform, normal and sign draws."""
    for t, name in ((indices, "indices"), (draws, "draws")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return torch.ops.advx.sample_bits.default(indices, draws, int(key), int(count))


@torch.library.register_fake("advx::sample_bits")
def _sample_bits_fake(indices, draws, key, count):
    return indices.new_empty((indices.shape[0], count))
