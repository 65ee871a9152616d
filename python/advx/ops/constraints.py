"""Where an optimizer's iterate may go: the ``constraint=`` of the fused ``*_step_`` ops
and of advx.optim (public as advx.LpBall and advx.Box).

Per parameter ``p`` of shape ``[B, ...]`` and per sample ``b`` (dim 0; a 0-dim
parameter is one sample), after every update::

    p[b] = clamp(center[b] + project(p[b] - center[b], eps[b], norm), lo, hi)

``LpBall`` is that ball (``norm`` "linf", "l2" or "l1") plus optional box ``bounds``
(``exact=True``: the Euclidean projection onto ball ∩ box instead of ball then box);
``Box(lo, hi)`` is the box alone. Projected gradient descent with any optimizer is
then ``advx.optim.Adam([x], constraint=advx.LpBall(x0, eps=8/255, bounds=(0, 1)))``.

A constraint is described by public fields, which advx.reference reads directly:
``norm`` ("none" for the box alone), ``lo``, ``hi``, ``centers`` (None, or one tensor
per parameter) and ``eps`` (a float or a [B] tensor; a subclass may give one [B] tensor
per parameter as ``radii`` instead). ``kernel_args`` packs them for the kernels.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch

from .. import _validate

__all__ = ["Constraint", "LpBall", "Box", "check_constraint_type"]


class Constraint:
    """Base class: a set the fused optimizer step projects every parameter onto."""

    norm = "none"
    centers = None
    lo = -math.inf
    hi = math.inf

    def check(self, params: Sequence[torch.Tensor]) -> None:
        """Raise a clear error when this constraint does not fit ``params`` (one group)."""
        for i, p in enumerate(params):
            if p.is_complex():
                raise TypeError(f"a constraint needs real parameters, param {i} is {p.dtype}")

    def kernel_args(self, params: Sequence[torch.Tensor]):
        """``(centers, radii, norm, lo, hi)`` as torch.ops.advx.*_step_ take them, for ``params``."""
        raise NotImplementedError

    def subset(self, positions: Sequence[int]) -> "Constraint":
        """This constraint for the parameters at ``positions`` of the group it was made for
        (an optimizer steps the parameters that have gradients, one device and dtype at a time)."""
        return self


def check_constraint_type(constraint) -> None:
    """``constraint=`` of the ops and of advx.optim: None or a Constraint."""
    if constraint is not None and not isinstance(constraint, Constraint):
        raise TypeError(f"constraint must be None, an advx.LpBall or an advx.Box, got {type(constraint).__name__}")


class Box(Constraint):
    """``lo <= p <= hi`` elementwise; an infinite bound is no bound."""

    def __init__(self, lo: float = -math.inf, hi: float = math.inf):
        self.lo, self.hi = _validate.bounds((lo, hi))

    def kernel_args(self, params):
        return [], [], "none", self.lo, self.hi

    def __repr__(self) -> str:
        return f"Box(lo={self.lo}, hi={self.hi})"


class LpBall(Constraint):
    """The ``norm`` ball of radius ``eps`` around ``center``, per sample, then ``bounds``.

    center: None (the origin), a tensor (a group with one parameter) or a list/tuple of
        tensors, one per parameter of the group, each like its parameter.
    eps: a positive float, or a tensor of shape [B] (one radius per sample; every
        parameter of the group then needs batch size B) or a 0-dim tensor. A tensor is
        read at every step, so changing it in place changes the radius.
    norm: "linf", "l2" or "l1" (L1 is always the exact projection).
    bounds: (lo, hi) box applied after the projection, or None.
    exact: False (default): scale into the ball, then clamp to the box (what the published
        attacks do). True: the Euclidean projection onto ball ∩ box (advx.ops.project_onto_),
        the nearest feasible point, which scaling then clamping is not when the box cuts the
        L2 ball. For L-inf the two are the same point (the center lies in the box).
    """

    def __init__(self, center=None, eps=None, norm: str = "linf", bounds=None, exact: bool = False):
        self.norm = _validate.norm(norm, _validate.L1_NORMS)
        if not isinstance(exact, bool):
            raise TypeError(f"exact must be True or False, got {exact!r}")
        self.exact = exact or self.norm == "l1"
        self.lo, self.hi = _validate.bounds(bounds)
        if eps is None:
            raise TypeError("LpBall needs eps (the radius): a positive float or a [B] tensor")
        self.eps = _validate.budget(eps, "eps")
        self.centers = _check_center(center)
        self._radius_cache: dict = {}

    def check(self, params):
        super().check(params)
        if self.centers is not None:
            if len(self.centers) != len(params):
                raise ValueError(
                    f"center has {len(self.centers)} tensor(s) but the parameter group has "
                    f"{len(params)} parameter(s); give one center per parameter"
                )
            for i, (c, p) in enumerate(zip(self.centers, params)):
                name = "center" if len(params) == 1 else f"center[{i}]"
                if c.shape != p.shape:
                    raise ValueError(f"{name} has shape {tuple(c.shape)} but its parameter has shape {tuple(p.shape)}")
                if c.device != p.device:
                    raise ValueError(f"{name} is on {c.device} but its parameter is on {p.device}")
                if c.dtype != p.dtype:
                    raise TypeError(f"{name} has dtype {c.dtype} but its parameter has dtype {p.dtype}")
        if isinstance(self.eps, torch.Tensor):
            for i, p in enumerate(params):
                batch = p.shape[0] if p.dim() > 0 else 1
                if self.eps.dim() == 1 and self.eps.shape[0] != batch:
                    raise ValueError(
                        f"eps has shape {tuple(self.eps.shape)} but parameter {i} has batch size "
                        f"{batch} (one radius per sample along dim 0)"
                    )
                if self.eps.device != p.device:
                    raise ValueError(f"eps is on {self.eps.device} but parameter {i} is on {p.device}")

    def kernel_args(self, params):
        centers = [] if self.centers is None else self.centers
        norm = f"onto_{self.norm}" if self.exact and self.norm != "linf" else self.norm
        return centers, [self._radius(p) for p in params], norm, self.lo, self.hi

    def subset(self, positions):
        if self.centers is None:
            return self
        part = copy.copy(self)  # shares eps and the radius cache
        part.centers = [self.centers[j] for j in positions]
        return part

    def _radius(self, p: torch.Tensor) -> torch.Tensor:
        """eps as the [B] tensor in p's math dtype on p's device (the kernels read radius[b]),
        rounded toward zero (see _validate.into_math_dtype)."""
        batch = p.shape[0] if p.dim() > 0 else 1
        dtype = _validate.math_dtype(p.dtype)
        if isinstance(self.eps, torch.Tensor):
            return _validate.into_math_dtype(self.eps.to(device=p.device), dtype).expand(batch)
        key = (batch, dtype, p.device)
        radius = self._radius_cache.get(key)
        if radius is None:
            exact = torch.full((batch,), self.eps, dtype=torch.float64, device=p.device)
            radius = self._radius_cache[key] = _validate.into_math_dtype(exact, dtype)
        return radius

    def __repr__(self) -> str:
        eps = f"tensor{tuple(self.eps.shape)}" if isinstance(self.eps, torch.Tensor) else self.eps
        center = None if self.centers is None else f"[{len(self.centers)} tensor(s)]"
        bounds = None if math.isinf(self.lo) and math.isinf(self.hi) else (self.lo, self.hi)
        return f"LpBall(center={center}, eps={eps}, norm={self.norm!r}, bounds={bounds}, exact={self.exact})"


def _check_center(center):
    if center is None:
        return None
    centers = [center] if isinstance(center, torch.Tensor) else center
    if not isinstance(centers, (list, tuple)):
        raise TypeError(f"center must be None, a tensor or a list/tuple of tensors, got {type(center).__name__}")
    for i, c in enumerate(centers):
        if not isinstance(c, torch.Tensor):
            raise TypeError(f"center[{i}] must be a tensor, got {type(c).__name__}")
        if not c.is_floating_point():
            raise TypeError(f"center[{i}] must be a floating point tensor, got dtype {c.dtype}")
    return [c.detach() for c in centers]
