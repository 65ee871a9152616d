"""advx.optim.Adam and AdamW: torch.optim.Adam/AdamW with a fused multi-tensor step."""
from __future__ import annotations

import torch

from ._base import (FusedOptimizerMixin, buckets, constraint_args, device_steps, lr_args, pick,
                    positions_with_grad)

__all__ = ["Adam", "AdamW"]


class _FusedAdamStep(FusedOptimizerMixin):
    @torch.no_grad()
    def step(self, closure=None):
        """One optimizer step: one fused adam_step_ call per (param group, device, dtype)."""
        if self._differentiable_fallback():
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], [], [], []
            self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)
            positions = positions_with_grad(group)
            beta1, beta2 = group["betas"]
            for (device, _), index in buckets(params).items():
                lr, lr_tensor = lr_args(group["lr"], device)
                grad_scale, found_inf = self._amp_tensors(device)
                bucket = pick(params, index)
                torch.ops.advx.adam_step_.default(
                    bucket, pick(grads, index), pick(exp_avgs, index), pick(exp_avg_sqs, index),
                    pick(max_exp_avg_sqs, index), device_steps(self.state, params, index),
                    lr=lr, beta1=float(beta1), beta2=float(beta2),
                    weight_decay=float(group["weight_decay"]), eps=float(group["eps"]),
                    amsgrad=bool(group["amsgrad"]), maximize=bool(group["maximize"]),
                    decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)),
                    lr_tensor=lr_tensor, grad_scale=grad_scale, found_inf=found_inf,
                    **constraint_args(group, bucket, [positions[i] for i in index]))
        return loss


class Adam(_FusedAdamStep, torch.optim.Adam):
    """torch.optim.Adam (same arguments, defaults, state and state_dict) whose step is one
    fused kernel per parameter group, plus ``constraint=`` (advx.LpBall / advx.Box),
    applied inside that kernel after the update. ``foreach``/``fused``/``capturable``
    are accepted; the fused kernel is always used (and is always capturable on CUDA).
    ``differentiable=True`` runs torch's own step."""

    def __init__(self, params, *args, constraint=None, **kwargs):
        super().__init__(params, *args, **kwargs)
        self._setup_constraint(constraint)


class AdamW(_FusedAdamStep, torch.optim.AdamW):
    """torch.optim.AdamW (decoupled weight decay) with advx's fused step and
    ``constraint=``; see advx.optim.Adam."""

    def __init__(self, params, *args, constraint=None, **kwargs):
        super().__init__(params, *args, **kwargs)
        self._setup_constraint(constraint)
