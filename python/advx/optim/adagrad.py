"""advx.optim.Adagrad: torch.optim.Adagrad with a fused multi-tensor step."""
from __future__ import annotations

import torch

from ._base import (FusedOptimizerMixin, buckets, constraint_args, device_steps, lr_args, pick,
                    positions_with_grad)

__all__ = ["Adagrad"]


class Adagrad(FusedOptimizerMixin, torch.optim.Adagrad):
    """torch.optim.Adagrad (same arguments, defaults, state and state_dict) whose step is
    one fused kernel per parameter group, plus ``constraint=`` (advx.LpBall /
    advx.Box); see advx.optim.Adam. Sparse gradients are an error."""

    def __init__(self, params, *args, constraint=None, **kwargs):
        super().__init__(params, *args, **kwargs)
        self._setup_constraint(constraint)

    @torch.no_grad()
    def step(self, closure=None):
        """One optimizer step: one fused adagrad_step_ call per (param group, device, dtype)."""
        if self._differentiable_fallback():
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, state_sums, steps = [], [], [], []
            has_sparse_grad, _ = self._init_group(group, params, grads, state_sums, steps)
            if has_sparse_grad:
                raise RuntimeError("advx.optim.Adagrad does not support sparse gradients; use torch.optim.Adagrad")
            positions = positions_with_grad(group)
            for (device, _), index in buckets(params).items():
                lr, lr_tensor = lr_args(group["lr"], device)
                grad_scale, found_inf = self._amp_tensors(device)
                bucket = pick(params, index)
                torch.ops.advx.adagrad_step_.default(
                    bucket, pick(grads, index), pick(state_sums, index),
                    device_steps(self.state, params, index),
                    lr=lr, lr_decay=float(group["lr_decay"]),
                    weight_decay=float(group["weight_decay"]), eps=float(group["eps"]),
                    maximize=bool(group["maximize"]), lr_tensor=lr_tensor,
                    grad_scale=grad_scale, found_inf=found_inf,
                    **constraint_args(group, bucket, [positions[i] for i in index]))
        return loss
