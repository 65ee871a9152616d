"""Adversarial images on the 8-bit grid, still inside their budget.

An attack's result is float; a PNG holds k / 255. Rounding each pixel to the nearest
level can leave the ball (eps 0.1 in L-inf gave a saved max |delta| of 0.102), and the
saved files then are not the images whose robust accuracy was reported. ``quantize``
picks grid points inside the ball instead: in L-inf the nearest level within
``[x - eps, x + eps]``; in L2 and L1 the nearest level, then, where the rounding left
the ball, the level toward the original for the pixels where that gains the most.
The result is checked the way a reader of the files measures it: levels / 255 in
float32 against the original float32 images.
"""
from __future__ import annotations

import math

import torch

from . import _validate

__all__ = ["quantize", "to_uint8"]


def _levels(levels: int) -> int:
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an int >= 2, got {levels!r}")
    return levels


def to_uint8(images: torch.Tensor, *, levels: int = 256) -> torch.Tensor:
    """``images`` on the grid k / (levels - 1) (e.g. :func:`quantize`'s result) as their
    integer levels k (uint8 for 256 levels, int64 beyond)."""
    top = _levels(levels) - 1
    k = torch.round(images.detach().double() * top)
    return k.to(torch.uint8 if top <= 255 else torch.int64)


def _eps_per_sample(eps, n: int, device) -> torch.Tensor:
    eps = _validate.budget(eps, "eps")
    e = eps.double().to(device) if isinstance(eps, torch.Tensor) else torch.tensor(eps, dtype=torch.float64,
                                                                                      device=device)
    if e.dim() == 1 and e.numel() not in (1, n):
        raise ValueError(f"eps has {e.numel()} values for {n} images")
    return e.reshape(-1).expand(n) if e.numel() == 1 else e


def _norms(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    return flat.norm(p=2 if norm == "l2" else 1, dim=1)


def quantize(adv: torch.Tensor, images: torch.Tensor, eps, norm: str = "linf", *, bounds=(0.0, 1.0),
             levels: int = 256) -> torch.Tensor:
    """``adv`` moved onto the grid ``k / (levels - 1)`` inside the ``norm`` ball of
    radius ``eps`` (a float or one per sample) around ``images`` and inside ``bounds``.

    Returns a new tensor of ``adv``'s dtype, shape and device; nothing is changed in
    place. Each pixel ends on one of the two levels around its value when that keeps the
    sample in the ball; where no level is close enough (an ``images`` pixel off the grid
    with ``eps`` under half a level), the level nearest the original is used, and that
    sample may stay outside by less than half a level per pixel: compare
    ``(result - images)`` norms with ``eps`` where it matters.
    """
    norm = _validate.norm(norm, _validate.L1_NORMS)
    lo, hi = _validate.bounds(bounds)
    top = _levels(levels) - 1
    if adv.shape != images.shape:
        raise ValueError(f"adv has shape {tuple(adv.shape)} but images has shape {tuple(images.shape)}")
    if adv.dim() < 1:
        raise ValueError("adv must be batched [B, ...]")
    if not (adv.is_floating_point() and images.is_floating_point()):
        raise TypeError(f"adv and images must be floating point, got {adv.dtype} and {images.dtype}")
    n = adv.shape[0]
    if n == 0:
        return adv.detach().clone()
    e = _eps_per_sample(eps, n, adv.device)
    view = (-1,) + (1,) * (adv.dim() - 1)
    a, c = adv.detach().double() * top, images.detach().double() * top  # in levels
    box_lo = math.ceil(max(lo, 0.0) * top) if math.isfinite(lo) else 0
    box_hi = math.floor(min(hi, 1.0) * top) if math.isfinite(hi) else top
    if box_lo > box_hi:
        raise ValueError(f"bounds {bounds} hold no level k / {top}")
    nearest = a.round().clamp(box_lo, box_hi)
    if norm == "linf":
        el = (e * top).reshape(view)
        # a hair of slack so a budget of whole levels keeps its last level; _checked undoes any excess
        q = torch.maximum(torch.minimum(nearest, (c + el + 1e-6).floor()), (c - el - 1e-6).ceil()).clamp(box_lo, box_hi)
        return _checked(q, c, images, e, norm, top, box_lo, box_hi).to(adv.dtype) / top
    # L2 / L1: per pixel the level on the original's side of adv, and the gain in
    # |delta|^p of taking it instead of the nearest level
    p = 2 if norm == "l2" else 1
    toward = torch.where(a > c, a.floor(), a.ceil()).clamp(box_lo, box_hi)
    gain = ((nearest - c).abs() ** p - (toward - c).abs() ** p).flatten(1)
    order = gain.argsort(dim=1, descending=True)
    excess = (nearest - c).abs().flatten(1).pow(p).sum(1) - (e * top) ** p
    cum = gain.gather(1, order).clamp(min=0).cumsum(1)
    switches = (cum < excess[:, None]).sum(1) + (excess > 0)  # the fewest largest gains that fit
    q = _switch(nearest, toward, order, switches)
    return _checked(q, c, images, e, norm, top, box_lo, box_hi, nearest=nearest, toward=toward,
                    order=order, switches=switches).to(adv.dtype) / top


def _switch(nearest, toward, order, switches):
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device)
                                            .expand_as(order).contiguous())
    take = (rank < switches[:, None]).reshape(nearest.shape)
    return torch.where(take, toward, nearest)


def _checked(q, c, images, e, norm, top, box_lo, box_hi, *, nearest=None, toward=None, order=None,
             switches=None):
    """q, with the samples a float32 reader would measure outside the ball moved by one
    more switch (L2/L1) or one level toward the original (L-inf) per round; samples that
    still do not fit take the level nearest the original everywhere."""
    for _ in range(8):
        over = _outside(q, images, e, norm, top)
        if not bool(over.any()):
            return q
        if norm == "linf":
            bad = _stored_delta(q, images, top).abs() > e.to(torch.float32).reshape((-1,) + (1,) * (q.dim() - 1))
            q = torch.where(bad, q + torch.where(q > c, -1.0, 1.0), q).clamp(box_lo, box_hi)
        else:
            switches = torch.where(over, (switches + 1).clamp(max=order.shape[1]), switches)
            q = _switch(nearest, toward, order, switches)
    over = _outside(q, images, e, norm, top)
    closest = c.round().clamp(box_lo, box_hi)
    return torch.where(over.reshape((-1,) + (1,) * (q.dim() - 1)), closest, q)


def _outside(q, images, e, norm, top) -> torch.Tensor:
    """Per sample: does the file's image (levels / top in float32) leave the ball, as
    float32 arithmetic measures it against the float32 original and eps?"""
    return _norms(_stored_delta(q, images, top), norm) > e.to(torch.float32)


def _stored_delta(q, images, top) -> torch.Tensor:
    # what a reader gets back: the integer level over top in float32 (as PIL + numpy or
    # torchvision read a PNG), minus the original in float32
    return q.to(torch.float32) / top - images.detach().to(torch.float32)
