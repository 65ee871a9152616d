"""Image priors as nn.Modules, for feature visualization losses."""
from __future__ import annotations

import torch
from torch import nn

from .ops.edge_energy import edge_energy


class EdgeEnergy(nn.Module):
    """``weight * advx.ops.edge_energy(x)``: the multiscale edge-energy penalty, ``[B]``.

    Penalizes high-frequency energy at every scale of an image pyramid; add it to a
    loss being minimized over the input to favour natural-looking images.
    """

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        energy = edge_energy(x)
        return energy if self.weight == 1.0 else energy * self.weight

    def extra_repr(self) -> str:
        return f"weight={self.weight}"
