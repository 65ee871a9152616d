"""advx.optim.SGD: torch.optim.SGD with a fused multi-tensor step."""
from __future__ import annotations

import torch

from .. import ops
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
        for lists, indices, kwargs in self._buckets(group, [params, grads, momentum_buffers]):
            ops.sgd_step_(*lists, momentum=momentum, dampening=float(group["dampening"]),
                          weight_decay=float(group["weight_decay"]), nesterov=bool(group["nesterov"]),
                          maximize=bool(group["maximize"]), **kwargs)
            if momentum != 0:
                # the op created the missing buffers (as torch's first step, they start as
                # the gradient): they live in the state from now on
                for i, buf in zip(indices, lists[2]):
                    if momentum_buffers[i] is None:
                        p = params[i]
                        self.state[p]["momentum_buffer"] = torch.view_as_complex(buf) if p.is_complex() else buf
