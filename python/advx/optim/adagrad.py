"""advx.optim.Adagrad: torch.optim.Adagrad with a fused multi-tensor step."""
from __future__ import annotations

import torch

from ._base import FusedOptimizerMixin

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
            for lists, _, kwargs in self._buckets(group, [params, grads, state_sums, steps], steps_at=3):
                torch.ops.advx.adagrad_step_.default(
                    *lists, lr_decay=float(group["lr_decay"]), weight_decay=float(group["weight_decay"]),
                    eps=float(group["eps"]), maximize=bool(group["maximize"]), **kwargs)
        return loss
