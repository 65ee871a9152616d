"""project_ and pgd_step_: the projection onto an Lp ball and the fused PGD step."""
from __future__ import annotations

import torch

from .. import _validate

__all__ = ["project_", "pgd_step_"]


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


@torch.library.register_fake("advx::project_")
def _project_fake(delta, eps, norm):
    return None


@torch.library.register_fake("advx::pgd_step_")
def _pgd_step_fake(x_adv, grad, x_orig, eps, alpha, norm, lo, hi):
    return None
