"""Plain-PyTorch apgd_step_: advx.ops.apgd_step_'s docstring, line for line."""
from __future__ import annotations

import math

import torch

from . import exact
from .project import l2_norms, per_sample, project_onto_


def _l1_norms(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], math.prod(v.shape[1:])).abs().sum(1).reshape(-1, *([1] * (v.dim() - 1)))


def _project(v, x_orig, radius, norm, bounds):
    """P: ball then box (linf, l2), the exact projection onto ball ∩ box (l1); in place."""
    if norm == "l1":
        return project_onto_(v, x_orig, radius, "l1", bounds)
    eps = per_sample(radius, v)
    if norm == "linf":
        v.copy_(x_orig + torch.clamp(v - x_orig, -eps, eps))
    else:
        delta = v - x_orig
        v.copy_(x_orig + delta * torch.clamp(eps / l2_norms(delta), max=1.0))
    box = exact.box_bounds(bounds, v.dtype)
    if box is not None:
        v.clamp_(*box)
    return (exact.into_linf_ if norm == "linf" else exact.into_l2_)(v, x_orig, radius)


@torch.no_grad()
def apgd_step_(x_adv, x_prev, grad, x_orig, eps, step_size, alpha=0.75, norm="linf", bounds=(0.0, 1.0)):
    radius = exact.radius(eps, x_adv)
    eta = per_sample(exact.radius(step_size, x_adv), x_adv)
    if norm == "linf":
        u = grad.sign()
    elif norm == "l2":
        u = grad / (l2_norms(grad) + 1e-12)
    elif norm == "l1":
        u = grad / (_l1_norms(grad) + 1e-12)
    else:
        raise ValueError(f"norm must be 'linf', 'l2' or 'l1', got {norm!r}")
    z = _project(x_adv + eta * u, x_orig, radius, norm, bounds)
    w = x_adv + alpha * (z - x_adv) + (1 - alpha) * (x_adv - x_prev)
    x_prev.copy_(x_adv)
    x_adv.copy_(_project(w, x_orig, radius, norm, bounds))
    return x_adv
