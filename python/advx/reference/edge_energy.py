"""Plain-PyTorch multiscale edge energy, as advx.ops.edge_energy defines it: conv2d + avg_pool2d."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_5x5(dtype: torch.dtype, device) -> torch.Tensor:
    """The 5x5 Gaussian (sigma 1) normalized to sum 1, as a [1, 1, 5, 5] conv weight."""
    k = torch.exp(-torch.arange(-2.0, 3.0, dtype=dtype, device=device) ** 2 / 2)
    k2 = torch.outer(k, k)
    return (k2 / k2.sum()).view(1, 1, 5, 5)


def edge_energy(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B]: sum over channels and pyramid levels of ||u - G*u||^2."""
    batch, channels, height, width = x.shape
    u = x.reshape(batch * channels, 1, height, width)
    weight = gaussian_5x5(x.dtype, x.device)
    energy = x.new_zeros(batch * channels)
    while min(u.shape[-2:]) > 5:
        blurred = F.conv2d(u, weight, padding=2)
        energy = energy + (u - blurred).flatten(1).pow(2).sum(1)
        u = F.avg_pool2d(u, kernel_size=2, padding=1)
    return energy.view(batch, channels).sum(1)
