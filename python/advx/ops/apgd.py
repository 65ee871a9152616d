"""apgd_step_: one fused APGD iteration (the momentum step and both projections)."""
from __future__ import annotations

import torch

from .. import _validate

__all__ = ["apgd_step_"]


def apgd_step_(x_adv: torch.Tensor, x_prev: torch.Tensor, grad: torch.Tensor, x_orig: torch.Tensor, eps,
               step_size, alpha: float = 0.75, norm: str = "linf", bounds=(0.0, 1.0)) -> torch.Tensor:
    """One iteration of APGD (Croce & Hein, 2020), in place on ``x_adv`` and ``x_prev``.

    Per sample, with ``eta`` its step size::

        u = sign(g)              (linf)
            g / (||g||_2 + 1e-12) (l2)
            g / (||g||_1 + 1e-12) (l1: pass the sparse direction, e.g. the sign of g on
                                   its largest coordinates)
        z = P(x + eta * u)
        x_prev, x = x, P(x + alpha * (z - x) + (1 - alpha) * (x - x_prev))

    P is the published projection for ``linf`` and ``l2`` (the ball of radius ``eps``
    around ``x_orig``, then the box, as in ``pgd_step_``) and the exact projection onto
    the L1 ball ∩ box for ``l1`` (as in ``project_onto_``). ``z`` is rounded to the data's
    dtype, as if stored. ``alpha``: the weight of the new step (1 on APGD's first
    iteration, 0.75 after). ``eps`` and ``step_size``: floats or ``[B]`` tensors. The
    result lies in the ball and the box in x's own dtype. Returns ``x_adv``.
    """
    norm = _validate.norm(norm, _validate.L1_NORMS)
    lo, hi = _validate.bounds(bounds)
    _validate.batched(x_adv, "x_adv")
    for t, name in ((x_prev, "x_prev"), (grad, "grad"), (x_orig, "x_orig")):
        _validate.same_shape(x_adv, "x_adv", t, name)
    eps = _validate.budget_tensor(eps, "eps", x_adv)
    step_size = _validate.budget_tensor(step_size, "step_size", x_adv)
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    with torch.no_grad():
        torch.ops.advx.apgd_step_.default(x_adv, x_prev, grad, x_orig, eps, step_size, alpha, norm, lo, hi)
    return x_adv


@torch.library.register_fake("advx::apgd_step_")
def _apgd_step_fake(x_adv, x_prev, grad, x_orig, eps, step_size, alpha, norm, lo, hi):
    return None
