"""project_ and pgd_step_: the projection onto an Lp ball and the fused PGD step."""
from __future__ import annotations

import torch

from .. import _validate

__all__ = ["project_", "pgd_step_", "project_onto_"]


def project_(delta: torch.Tensor, eps, norm: str = "linf") -> torch.Tensor:
    """Project each sample of ``delta`` onto the ``norm`` ball of radius ``eps``, in place.

    ``linf``: ``clamp(delta, -eps, eps)``; ``l2``: ``delta *= min(1, eps / ||delta||_2)``.
    ``eps`` is a float or a ``[B]`` tensor (one radius per sample). Returns ``delta``.
    """
    norm = _validate.norm(norm)
    _validate.batched(delta, "delta")
    eps = _validate.budget_tensor(eps, "eps", delta)
    with torch.no_grad():
        torch.ops.advx.project_.default(delta, eps, norm)
    return delta


def pgd_step_(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x_orig: torch.Tensor,
    eps,
    alpha,
    norm: str = "linf",
    bounds=(0.0, 1.0),
) -> torch.Tensor:
    """One projected gradient *ascent* step on ``x_adv``, in place, in one pass.

    ``linf``: ``x = clamp(x_orig + clamp(x + alpha*sign(g) - x_orig, -eps, eps), lo, hi)``.
    ``l2``: ``x += alpha * g / (||g|| + 1e-10)``, then the delta to ``x_orig`` is scaled
    into the ``eps`` ball and the result clamped to ``bounds``. ``eps`` and ``alpha``
    are floats or ``[B]`` tensors; ``bounds=None`` disables the box. Returns ``x_adv``.
    """
    norm = _validate.norm(norm)
    lo, hi = _validate.bounds(bounds)
    _validate.batched(x_adv, "x_adv")
    # shapes are compared here because the kernel's own shape check raises RuntimeError
    # (torch.ops.advx callers rely on it); devices and dtypes are the kernel's to check
    _validate.same_shape(x_adv, "x_adv", grad, "grad")
    _validate.same_shape(x_adv, "x_adv", x_orig, "x_orig")
    eps = _validate.budget_tensor(eps, "eps", x_adv)
    alpha = _validate.budget_tensor(alpha, "alpha", x_adv)
    with torch.no_grad():
        torch.ops.advx.pgd_step_.default(x_adv, grad, x_orig, eps, alpha, norm, lo, hi)
    return x_adv


def project_onto_(x: torch.Tensor, center: torch.Tensor, eps, norm: str = "l2", bounds=(0.0, 1.0)) -> torch.Tensor:
    """The Euclidean projection of each sample of ``x`` onto ``{z : ||z - center|| <= eps}``
    intersected with the box ``bounds``, in place: the point of that set nearest to x.

    Not the same as scaling into the ball and then clamping (what ``pgd_step_`` does, as
    the published attacks do): for an L2 ball that is cut by the box, clamping after
    scaling can land farther from x than the nearest point. ``norm``: "linf", "l2" or
    "l1"; ``eps`` a float or a ``[B]`` tensor; ``bounds=None``: no box. ``center`` must
    lie in the box (else the set may be empty: x then ends next to the clamped center).
    The result lies in the ball and the box in x's own dtype. Returns ``x``.
    """
    norm = _validate.norm(norm, _validate.L1_NORMS)
    lo, hi = _validate.bounds(bounds)
    _validate.batched(x, "x")
    _validate.same_shape(x, "x", center, "center")
    eps = _validate.budget_tensor(eps, "eps", x)
    with torch.no_grad():
        torch.ops.advx.project_onto_.default(x, center, eps, norm, lo, hi)
    return x


@torch.library.register_fake("advx::project_onto_")
def _project_onto_fake(x, center, eps, norm, lo, hi):
    return None


@torch.library.register_fake("advx::project_")
def _project_fake(delta, eps, norm):
    return None


@torch.library.register_fake("advx::pgd_step_")
def _pgd_step_fake(x_adv, grad, x_orig, eps, alpha, norm, lo, hi):
    return None
