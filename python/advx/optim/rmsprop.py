"""advx.optim.RMSprop: torch.optim.RMSprop with a fused multi-tensor step."""
from __future__ import annotations

import torch

from ._base import (FusedOptimizerMixin, buckets, constraint_args, device_steps, lr_args, pick,
                    positions_with_grad)

__all__ = ["RMSprop"]


class RMSprop(FusedOptimizerMixin, torch.optim.RMSprop):
    """torch.optim.RMSprop (same arguments, defaults, state and state_dict) whose step is
    one fused kernel per parameter group (torch has no fused RMSprop), plus
    ``constraint=`` (advx.LpBall / advx.Box); see advx.optim.Adam."""

    def __init__(self, params, *args, constraint=None, **kwargs):
        super().__init__(params, *args, **kwargs)
        self._setup_constraint(constraint)

    @torch.no_grad()
    def step(self, closure=None):
        """One optimizer step: one fused rmsprop_step_ call per (param group, device, dtype)."""
        if self._differentiable_fallback():
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, square_avgs, momentum_buffers, grad_avgs, steps = [], [], [], [], [], []
            self._init_group(group, params, grads, square_avgs, momentum_buffers, grad_avgs, steps)
            positions = positions_with_grad(group)
            momentum = float(group["momentum"])
            for (device, _), index in buckets(params).items():
                lr, lr_tensor = lr_args(group["lr"], device)
                grad_scale, found_inf = self._amp_tensors(device)
                bucket = pick(params, index)
                torch.ops.advx.rmsprop_step_.default(
                    bucket, pick(grads, index), pick(square_avgs, index), pick(grad_avgs, index),
                    pick(momentum_buffers, index), device_steps(self.state, params, index),
                    lr=lr, alpha=float(group["alpha"]), eps=float(group["eps"]),
                    weight_decay=float(group["weight_decay"]), momentum=momentum,
                    centered=bool(group["centered"]), maximize=bool(group["maximize"]),
                    lr_tensor=lr_tensor, grad_scale=grad_scale, found_inf=found_inf,
                    **constraint_args(group, bucket, [positions[i] for i in index]))
        return loss
