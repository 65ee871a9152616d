"""advx.optim.RMSprop: torch.optim.RMSprop with a fused multi-tensor step."""
from __future__ import annotations

import torch

from .. import ops
from ._base import FusedOptimizerMixin

__all__ = ["RMSprop"]


class RMSprop(FusedOptimizerMixin, torch.optim.RMSprop):
    """torch.optim.RMSprop (same arguments, defaults, state and state_dict) whose step is
    one fused kernel per parameter group (torch has no fused RMSprop), plus
    ``constraint=`` (advx.LpBall / advx.Box); see advx.optim.Adam."""

    def _fused_group_step(self, group: dict) -> None:
        """One parameter group's step: one fused rmsprop_step_ call per (device, dtype)."""
        params, grads, square_avgs, momentum_buffers, grad_avgs, steps = [], [], [], [], [], []
        self._init_group(group, params, grads, square_avgs, momentum_buffers, grad_avgs, steps)
        for lists, _, kwargs in self._buckets(
                group, [params, grads, square_avgs, grad_avgs, momentum_buffers, steps], steps_at=5):
            ops.rmsprop_step_(
                *lists, alpha=float(group["alpha"]), eps=float(group["eps"]),
                weight_decay=float(group["weight_decay"]), momentum=float(group["momentum"]),
                centered=bool(group["centered"]), maximize=bool(group["maximize"]), **kwargs)
