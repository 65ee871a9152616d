"""advx.optim.Adagrad: torch.optim.Adagrad with a fused multi-tensor step."""
from __future__ import annotations

import torch

from .. import ops
from ._base import FusedOptimizerMixin

__all__ = ["Adagrad"]


class Adagrad(FusedOptimizerMixin, torch.optim.Adagrad):
    """torch.optim.Adagrad (same arguments, defaults, state and state_dict) whose step is
    one fused kernel per parameter group, plus ``constraint=`` (advx.LpBall /
    advx.Box); see advx.optim.Adam. Sparse gradients are an error. ``fused=True`` is
    accepted on every device: advx's step is fused everywhere (torch.optim.Adagrad's own
    fused step is CPU-only)."""

    def __init__(self, params, *args, **kwargs):
        super().__init__(params, *args, **kwargs)
        # torch's _init_group refuses fused=True on CUDA for its own kernel, not ours.
        self._need_device_dtype_check_for_fused = False

    def _fused_group_step(self, group: dict) -> None:
        """One parameter group's step: one fused adagrad_step_ call per (device, dtype)."""
        params, grads, state_sums, steps = [], [], [], []
        has_sparse_grad, _ = self._init_group(group, params, grads, state_sums, steps)
        if has_sparse_grad:
            raise RuntimeError("advx.optim.Adagrad does not support sparse gradients; use torch.optim.Adagrad")
        for lists, _, kwargs in self._buckets(group, [params, grads, state_sums, steps], steps_at=3):
            ops.adagrad_step_(
                *lists, lr_decay=float(group["lr_decay"]), weight_decay=float(group["weight_decay"]),
                eps=float(group["eps"]), maximize=bool(group["maximize"]), **kwargs)
