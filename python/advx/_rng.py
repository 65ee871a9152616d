"""Per-sample randomness that does not depend on the batch: a counter-based generator.

Every random number an attack draws for a sample is a hash of (seed, the attack's
stream name, the draw number (restart, query), the sample's index in the dataset, the
element's position in the sample). Nothing is drawn from a stream that the batch shares,
so a sample gets the same numbers whatever the batch size, whichever samples share its
batch, in whatever order the data comes and on however many processes it is split.

The hash is Wellons' "lowbias32" on 32-bit values, computed by the fused op
``advx::sample_bits`` (twin: advx.reference.sample_bits): integer operations only, so
the bits are the same on every device. Uniform numbers carry 24 bits.
"""
from __future__ import annotations

import math
import zlib

import torch

__all__ = ["SampleRandom"]

_MASK = 0xFFFFFFFF


def _mix_int(v: int) -> int:
    """lowbias32 on a Python int's low 32 bits (advx.reference.sample_bits' mix)."""
    x = v & _MASK
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK
    return x ^ (x >> 16)


class SampleRandom:
    """Random numbers per sample: ``SampleRandom(seed, indices, stream)``, ``indices`` the
    [B] dataset indices of the batch's samples and ``stream`` a name (one per attack and
    purpose). Each method takes a ``draw`` number (a restart, a query) and returns a
    tensor [B, *shape] whose row b depends only on (seed, stream, draw, indices[b]).
    ``draw`` may also be a [B] int64 tensor, row b then drawing its own ``draw[b]`` (the
    same numbers as a scalar draw of that value): the rows of a continuously batched
    attack are at different queries."""

    def __init__(self, seed: int, indices: torch.Tensor, stream: str):
        self.indices = indices.to(torch.int64)
        key = _mix_int(int(seed) & _MASK) ^ _mix_int(int(seed) >> 32) ^ zlib.crc32(stream.encode())
        self._key = _mix_int(key)

    def subset(self, rows: torch.Tensor) -> "SampleRandom":
        """The same generator for the samples at ``rows`` of this batch."""
        other = object.__new__(SampleRandom)
        other.indices, other._key = self.indices[rows], self._key
        return other

    def _bits(self, draw, count: int) -> torch.Tensor:
        """[B, count] 32-bit hashes; ``draw`` an int or a [B] tensor (one draw per row)."""
        idx = self.indices
        if isinstance(draw, torch.Tensor):
            draws = draw.to(device=idx.device, dtype=torch.int64).expand(idx.shape[0])
        else:
            draws = torch.full((idx.shape[0],), int(draw), dtype=torch.int64, device=idx.device)
        return torch.ops.advx.sample_bits.default(idx, draws, self._key, count)

    def uniform(self, shape, draw=0, *, dtype=torch.float32) -> torch.Tensor:
        """Uniform in (0, 1), [B, *shape]."""
        shape = tuple(shape)
        count = math.prod(shape)
        bits = self._bits(draw, count) >> 8  # 24 bits
        u = (bits.to(torch.float64) + 0.5) / float(1 << 24)
        return u.to(dtype).reshape(self.indices.shape[0], *shape)

    def normal(self, shape, draw=0, *, dtype=torch.float32) -> torch.Tensor:
        """Standard normal, [B, *shape] (Box-Muller on two uniforms per number)."""
        shape = tuple(shape)
        count = math.prod(shape)
        u = self.uniform((2, count), draw, dtype=torch.float64)
        z = torch.sqrt(-2.0 * torch.log(u[:, 0])) * torch.cos(2.0 * math.pi * u[:, 1])
        return z.to(dtype).reshape(self.indices.shape[0], *shape)

    def signs(self, shape, draw=0, *, dtype=torch.float32) -> torch.Tensor:
        """-1 or +1 with equal chance, [B, *shape]."""
        return torch.where(self.uniform(shape, draw, dtype=torch.float64) < 0.5, -1.0, 1.0).to(dtype)

    def integers(self, high, draw=0) -> torch.Tensor:
        """One integer in [0, high) per sample, [B]; ``high`` an int or a [B] tensor."""
        if isinstance(high, torch.Tensor):
            high = high.to(device=self.indices.device, dtype=torch.int64)
        return (self.uniform((), draw, dtype=torch.float64) * high).floor().long().clamp_(max=high - 1)
