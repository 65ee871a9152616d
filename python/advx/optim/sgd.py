"""advx.optim.SGD: torch.optim.SGD with a fused multi-tensor step."""
from __future__ import annotations

import torch

from ._base import FusedOptimizerMixin

__all__ = ["SGD"]


class SGD(FusedOptimizerMixin, torch.optim.SGD):
    """torch.optim.SGD (same arguments, defaults, state and state_dict) whose step is one
    fused kernel per parameter group, plus ``constraint=`` (advx.LpBall / advx.Box)
    applied inside that kernel; see advx.optim.Adam. Sparse gradients are an error."""

    def _fused_group_step(self, group: dict) -> None:
        """One parameter group's step: one fused sgd_step_ call per (device, dtype)."""
        params, grads, momentum_buffers = [], [], []
        if self._init_group(group, params, grads, momentum_buffers):
            raise RuntimeError("advx.optim.SGD does not support sparse gradients; use torch.optim.SGD")
        momentum = float(group["momentum"])
        new_buffer = []
        if momentum != 0:
            # torch's first step sets the buffer to the gradient: the kernel does that
            # for the buffers flagged new, which live in the state from now on
            new_buffer = [buf is None for buf in momentum_buffers]
            for i, p in enumerate(params):
                if new_buffer[i]:
                    momentum_buffers[i] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    self.state[p]["momentum_buffer"] = momentum_buffers[i]
        for lists, indices, kwargs in self._buckets(group, [params, grads, momentum_buffers]):
            params_b, grads_b, bufs_b = lists
            init = [new_buffer[i] for i in indices] if new_buffer else []
            torch.ops.advx.sgd_step_.default(
                params_b, grads_b, bufs_b, init, momentum=momentum,
                dampening=float(group["dampening"]), weight_decay=float(group["weight_decay"]),
                nesterov=bool(group["nesterov"]), maximize=bool(group["maximize"]), **kwargs)
