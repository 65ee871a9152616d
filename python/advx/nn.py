"""Layers that attacks and training loops put around a model.

``Normalize`` lets every attack work in pixel space [0, 1] on a model trained on
normalized inputs: the perturbation is added to the unnormalized image, and the
normalization happens inside the wrapped model. ``GradReverse`` is the gradient
reversal layer of domain-adversarial training (identity forward, ``-lambd * grad``
backward).
"""
from __future__ import annotations

import math
from numbers import Real

import torch
from torch import nn

__all__ = ["Normalize", "GradReverse", "grad_reverse"]


def _per_channel(values, name: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32)
    if t.dim() > 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a float or a 1-D sequence (one value per channel), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t.reshape(-1)


class Normalize(nn.Module):
    """``model((x - mean) / std)`` with ``mean``/``std`` per channel (dim 1 of ``x``).

    Attacks then see a model whose input is the raw image in [0, 1].
    """

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be callable (an nn.Module), got {type(model).__name__}")
        mean_t, std_t = _per_channel(mean, "mean"), _per_channel(std, "std")
        if bool((std_t <= 0).any()):
            raise ValueError(f"std must be positive, got {std_t.tolist()}")
        if mean_t.numel() != std_t.numel() and 1 not in (mean_t.numel(), std_t.numel()):
            raise ValueError(f"mean has {mean_t.numel()} channels but std has {std_t.numel()}")
        self.model = model
        # buffers: they follow .to(device) and land in state_dict
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def _shaped(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if t.numel() > 1 and (x.dim() < 2 or x.shape[1] != t.numel()):
            raise ValueError(
                f"x has shape {tuple(x.shape)} but mean/std have {t.numel()} channels (dim 1)"
            )
        # no copy where the wrapper was moved with the model (.to(device)); else x's device
        return t.to(device=x.device, dtype=x.dtype).reshape(1, -1, *([1] * max(x.dim() - 2, 0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self._shaped(self.mean, x)) / self._shaped(self.std, x))

    def extra_repr(self) -> str:
        # float32 buffers: show the values given, not float32 noise (0.2, not 0.20000000298023224)
        def short(t):
            return "[" + ", ".join(f"{v:.6g}" for v in t.tolist()) + "]"
        return f"mean={short(self.mean)}, std={short(self.std)}"


class _GradReverseFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lambd):
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output):
        return -ctx.lambd * grad_output, None


def _check_lambd(lambd) -> float:
    if isinstance(lambd, bool) or not isinstance(lambd, Real) or not math.isfinite(lambd):
        raise TypeError(f"lambd must be a finite float, got {lambd!r}")
    return float(lambd)


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-lambd`` in the backward."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    return _GradReverseFn.apply(x, _check_lambd(lambd))


class GradReverse(nn.Module):
    """The gradient reversal layer as a module: ``grad_reverse(x, self.lambd)``.

    ``lambd`` is a plain attribute so a schedule can change it during training.
    """

    def __init__(self, lambd: float = 1.0):
        super().__init__()
        self.lambd = _check_lambd(lambd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.lambd)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}"
