"""What "inside the budget" means in a dtype, in plain PyTorch: a result r in its own
dtype satisfies, compared in float64, |r - c| <= eps (L-inf), ||r - c||_2 <= eps (L2)
and lo <= r <= hi. Rounding to nearest can break each of these by an ulp; these helpers
round toward the inside instead (the kernels do the same in csrc/common/exact.h)."""
from __future__ import annotations

import math

import torch

from .. import _validate

__all__ = ["math_dtype", "radius", "box_bounds", "into_linf_", "into_l2_", "into_l1_"]


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _toward_zero(exact: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    rounded = exact.to(dtype)
    up = rounded.double() > exact
    return torch.where(up, torch.nextafter(rounded, torch.zeros_like(rounded)), rounded)


def radius(eps, x: torch.Tensor) -> torch.Tensor:
    """eps (float or [B] / 0-dim tensor) per sample, [B] in x's math dtype, rounded toward
    zero: never above the radius asked for (and the largest finite value for a huge one)."""
    exact = torch.as_tensor(eps, dtype=torch.float64, device=x.device).expand(x.shape[0])
    return _toward_zero(exact, math_dtype(x.dtype))


def box_bounds(bounds, dtype: torch.dtype):
    """(lo, hi) rounded inward to values of ``dtype``; None for no box. (The kernels round
    theirs in C++, common/exact.h box_lo/box_hi: this is the Python side's rule.)"""
    return None if bounds is None else _validate.bounds_in(float(bounds[0]), float(bounds[1]), dtype)


def _neighbour(r: torch.Tensor, up) -> torch.Tensor:
    """The next value of r's dtype above (up) or below r, elementwise (``up`` a bool or a
    bool tensor)."""
    up = torch.as_tensor(up, device=r.device)
    if r.element_size() != 2:
        return torch.where(up, torch.nextafter(r, torch.full_like(r, math.inf)),
                           torch.nextafter(r, torch.full_like(r, -math.inf)))
    # half and bfloat16 on the sign-magnitude bit pattern (nextafter lacks them on some devices)
    bits = r.view(torch.int16).to(torch.int32) & 0xFFFF
    negative, zero = (bits & 0x8000) != 0, (bits & 0x7FFF) == 0
    stepped = torch.where(up != negative, bits + 1, bits - 1)
    stepped = torch.where(zero, torch.where(up, 1, 0x8001), stepped)
    stepped = torch.where(stepped >= 0x8000, stepped - 0x10000, stepped)
    return stepped.to(torch.int16).view(r.dtype)


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def into_linf_(r: torch.Tensor, center: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """One step of r's dtype toward the center where |r - c| > eps in float64 (eps: [B])."""
    e = _per_sample(eps.double(), r)
    d = r.double() - center.double()
    out = d.abs() > e
    return r.copy_(torch.where(out, _neighbour(r, d < 0), r))


def into_l1_(r: torch.Tensor, center: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """into_l2_ for the L1 ball."""
    return into_l2_(r, center, eps, p=1)


def into_l2_(r: torch.Tensor, center: torch.Tensor, eps: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Samples with ||r - c|| > eps in float64 (up to a relative 2^-40 of eps^2) shrunk
    toward the center, by the factor eps / ||r - c|| * (1 - 2^-30) and one more step of
    r's dtype, until inside (p = 1: the same for the L1 norm)."""
    if r.numel() == 0:
        return r
    flat_r, flat_c = r.reshape(r.shape[0], -1).clone(), center.reshape(r.shape[0], -1).double()
    e = eps.double()
    for _ in range(8):
        d = flat_r.double() - flat_c
        size = (d * d).sum(dim=1) if p == 2 else d.abs().sum(dim=1)
        outside = size > (e * e if p == 2 else e) * (1 - 2.0 ** -40)
        if not bool(outside.any()):
            break
        shrink = (e / (size.sqrt() if p == 2 else size) * (1 - 2.0 ** -30)).unsqueeze(1)
        moved = (flat_c + d * shrink).to(r.dtype)
        md = moved.double() - flat_c
        same_side = (md * d) > 0
        moved = torch.where(same_side, _neighbour(moved, d < 0), flat_c.to(r.dtype))
        moved = torch.where(d == 0, flat_r, moved)
        flat_r.copy_(torch.where(outside.unsqueeze(1), moved, flat_r))
    return r.copy_(flat_r.reshape(r.shape))
