"""Plain-PyTorch sample_bits: the lowbias32 hash on 32-bit values held in int64 tensors
(each product split so that no int64 product overflows)."""
from __future__ import annotations

import torch

_MASK = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def sample_bits(indices: torch.Tensor, draws: torch.Tensor, key: int, count: int) -> torch.Tensor:
    """[B, count] int64 in [0, 2^32): element (b, j) a hash of (key, indices[b], draws[b], j)."""
    drawn = _mix(key ^ _mix(draws & _MASK))
    row = _mix(_mix((indices & _MASK) ^ drawn) ^ ((indices >> 32) & _MASK))
    pos = _mix(torch.arange(count, device=indices.device, dtype=torch.int64) + 0x9E3779B9 & _MASK)
    return _mix(row[:, None] ^ pos[None, :])
