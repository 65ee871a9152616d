"""edge_energy: the multiscale edge-energy image prior, with a fused analytic backward."""
from __future__ import annotations

import torch

from .. import _validate

__all__ = ["edge_energy"]


def edge_energy(x: torch.Tensor) -> torch.Tensor:
    """Multiscale edge energy of a batch of images ``x`` of shape ``[B, C, H, W]``.

    Each channel is an image ``u``; while ``min(H, W) > 5`` the energy gains
    ``sum((u - G*u)^2)`` (``G``: 5x5 Gaussian, sigma 1, zero padding) and ``u`` is
    average-pooled by 2 (``padding=1``). Returns ``[B]`` (channels summed), in x's dtype.
    Differentiable (to any order) through fused kernels.
    """
    # the kernels check the same and raise RuntimeError (torch.ops.advx callers rely on
    # it); advx.ops names the wrong type and shape with TypeError and ValueError
    if not _validate.tensor(x, "x").is_floating_point():
        raise TypeError(f"x must be a floating point tensor, got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"x must have shape [B, C, H, W], got shape {tuple(x.shape)}")
    return torch.ops.advx.edge_energy.default(x)


@torch.library.register_fake("advx::edge_energy")
def _edge_energy_fake(x):
    return x.new_empty((x.shape[0],))


@torch.library.register_fake("advx::edge_energy_backward")
def _edge_energy_backward_fake(grad_energy, x):
    return x.new_empty(x.shape)


def _save_x(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _edge_energy_grad(ctx, grad_energy):
    (x,) = ctx.saved_tensors
    return torch.ops.advx.edge_energy_backward.default(grad_energy, x)


def _save_both(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _edge_energy_backward_grad(ctx, grad_out):
    # edge_energy_backward(ge, x) = 2 ge M x with M symmetric (a sum of P^T R R P over
    # levels): it is bilinear, so its own derivatives are calls of itself.
    grad_energy, x = ctx.saved_tensors
    grad_grad_energy = grad_x = None
    if ctx.needs_input_grad[0]:
        per_unit = torch.ops.advx.edge_energy_backward.default(torch.ones_like(grad_energy), x)
        grad_grad_energy = (grad_out * per_unit).flatten(1).sum(1).to(grad_energy.dtype)
    if ctx.needs_input_grad[1]:
        grad_x = torch.ops.advx.edge_energy_backward.default(grad_energy, grad_out)
    return grad_grad_energy, grad_x


torch.library.register_autograd("advx::edge_energy", _edge_energy_grad, setup_context=_save_x)
torch.library.register_autograd(
    "advx::edge_energy_backward", _edge_energy_backward_grad, setup_context=_save_both
)
