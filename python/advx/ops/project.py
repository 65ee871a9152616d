"""project_ and pgd_step_: the projection onto an Lp ball and the fused PGD step."""
from __future__ import annotations

import torch

from ._checks import budget, bounds_pair, check_batched, check_like, check_norm, check_tensor

__all__ = ["project_", "pgd_step_"]


def project_(delta: torch.Tensor, eps, norm: str = "linf") -> torch.Tensor:
    """Project each sample of ``delta`` onto the ``norm`` ball of radius ``eps``, in place.

    ``linf``: ``clamp(delta, -eps, eps)``; ``l2``: ``delta *= min(1, eps / ||delta||_2)``.
    ``eps`` is a float or a ``[B]`` tensor (one radius per sample). Returns ``delta``.
    """
    check_tensor(delta, "delta")
    check_batched(delta, "delta")
    norm = check_norm(norm)
    eps_t = budget(eps, "eps", delta)
    with torch.no_grad():
        torch.ops.advx.project_.default(delta, eps_t, norm)
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
    check_tensor(x_adv, "x_adv")
    check_batched(x_adv, "x_adv")
    check_like(x_adv, "x_adv", grad, "grad")
    check_like(x_adv, "x_adv", x_orig, "x_orig")
    norm = check_norm(norm)
    lo, hi = bounds_pair(bounds)
    eps_t = budget(eps, "eps", x_adv)
    alpha_t = budget(alpha, "alpha", x_adv)
    with torch.no_grad():
        torch.ops.advx.pgd_step_.default(x_adv, grad, x_orig, eps_t, alpha_t, norm, lo, hi)
    return x_adv


@torch.library.register_fake("advx::project_")
def _project_fake(delta, eps, norm):
    return None


@torch.library.register_fake("advx::pgd_step_")
def _pgd_step_fake(x_adv, grad, x_orig, eps, alpha, norm, lo, hi):
    return None
