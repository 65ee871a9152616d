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
