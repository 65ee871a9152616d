"""Plain-PyTorch project_ and pgd_step_: the formulas of advx.ops' docstrings, line for line."""
from __future__ import annotations

import math

import torch

from . import exact


def per_sample(value, x: torch.Tensor):
    """A float stays a float; a [B] tensor becomes [B, 1, ..., 1] in x's dtype."""
    if isinstance(value, torch.Tensor):
        return value.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return value


def l2_norms(v: torch.Tensor) -> torch.Tensor:
    flat = v.reshape(v.shape[0], math.prod(v.shape[1:]))
    return flat.norm(p=2, dim=1).reshape(-1, *([1] * (v.dim() - 1)))


@torch.no_grad()
def project_(delta: torch.Tensor, eps, norm: str = "linf") -> torch.Tensor:
    radius = exact.radius(eps, delta)  # eps rounded toward zero into the math dtype
    eps = per_sample(radius, delta)
    zero = torch.zeros_like(delta)
    if norm == "linf":
        return exact.into_linf_(delta.copy_(torch.clamp(delta, -eps, eps)), zero, radius)
    if norm == "l2":
        # a zero delta gives eps/0 = inf, and min(1, inf) = 1 keeps it zero
        factor = torch.clamp(eps / l2_norms(delta), max=1.0)
        return exact.into_l2_(delta.mul_(factor), zero, radius)
    raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")


@torch.no_grad()
def pgd_step_(x_adv, grad, x_orig, eps, alpha, norm="linf", bounds=(0.0, 1.0)):
    radius = exact.radius(eps, x_adv)
    eps, alpha = per_sample(radius, x_adv), per_sample(exact.radius(alpha, x_adv), x_adv)
    if norm == "linf":
        delta = torch.clamp(x_adv + alpha * grad.sign() - x_orig, -eps, eps)
    elif norm == "l2":
        g = grad / (l2_norms(grad) + 1e-10)
        delta = (x_adv + alpha * g) - x_orig
        delta = delta * torch.clamp(eps / l2_norms(delta), max=1.0)
    else:
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    x = x_orig + delta
    box = exact.box_bounds(bounds, x_adv.dtype)  # rounded inward to values of the dtype
    x_adv.copy_(x if box is None else torch.clamp(x, *box))
    into = exact.into_linf_ if norm == "linf" else exact.into_l2_
    return into(x_adv, x_orig, radius)


@torch.no_grad()
def project_onto_(x, center, eps, norm="l2", bounds=(0.0, 1.0)):
    """The nearest point of {z : ||z - center|| <= eps} ∩ box, per sample, in float64: for
    l2 z = clamp((x + lam c) / (1 + lam)), for l1 z = clamp(c + soft_threshold(x - c, tau)),
    with the smallest multiplier (bisection) that puts z in the ball; linf a clamp."""
    if x.numel() == 0:
        return x
    box = (-math.inf, math.inf) if bounds is None else exact.box_bounds(bounds, x.dtype)
    radius = exact.radius(eps, x)
    y, c = x.double().reshape(x.shape[0], -1), center.double().reshape(x.shape[0], -1)
    e = radius.double()
    if norm == "linf":
        z = torch.minimum(torch.maximum(y, torch.clamp(c - e[:, None], min=box[0])), torch.clamp(c + e[:, None], max=box[1]))
        out = x.copy_(z.reshape(x.shape).to(x.dtype))
        return exact.into_linf_(out, center, radius)

    def point(m):
        if norm == "l2":
            return ((y + m[:, None] * c) / (1 + m[:, None])).clamp(*box)
        d = y - c
        return (c + d.sign() * (d.abs() - m[:, None]).clamp_min(0)).clamp(*box)

    def measure(m):
        d = point(m) - c
        return (d * d).sum(1) if norm == "l2" else d.abs().sum(1)

    limit = e * e if norm == "l2" else e
    m_lo, m_hi = torch.zeros_like(e), torch.ones_like(e)
    inside = measure(torch.zeros_like(e)) <= limit
    for _ in range(200):
        far = measure(m_hi) > limit
        if not bool(far.any()):
            break
        m_lo, m_hi = torch.where(far, m_hi, m_lo), torch.where(far, m_hi * 2, m_hi)
    for _ in range(60):
        mid = (m_lo + m_hi) / 2
        ok = measure(mid) <= limit
        m_lo, m_hi = torch.where(ok, m_lo, mid), torch.where(ok, mid, m_hi)
    m = torch.where(inside, torch.zeros_like(e), m_hi)
    x.copy_(point(m).reshape(x.shape).to(x.dtype))
    if norm == "l2":
        return exact.into_l2_(x, center, radius)
    return exact.into_l1_(x, center, radius)
