"""advx.optim.Adam and AdamW: torch.optim.Adam/AdamW with a fused multi-tensor step."""
from __future__ import annotations

import torch

from .. import ops
from ._base import FusedOptimizerMixin

__all__ = ["Adam", "AdamW"]


class _FusedAdamStep(FusedOptimizerMixin):
    def _fused_group_step(self, group: dict) -> None:
        """One parameter group's step: one fused adam_step_ call per (device, dtype)."""
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], [], [], []
        self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)
        beta1, beta2 = group["betas"]
        for lists, _, kwargs in self._buckets(
                group, [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps], steps_at=5):
            ops.adam_step_(
                *lists, beta1=float(beta1), beta2=float(beta2),
                weight_decay=float(group["weight_decay"]), eps=float(group["eps"]),
                amsgrad=bool(group["amsgrad"]), maximize=bool(group["maximize"]),
                decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)), **kwargs)


class Adam(_FusedAdamStep, torch.optim.Adam):
    """torch.optim.Adam (same arguments, defaults, state and state_dict) whose step is one
    fused kernel per parameter group, plus ``constraint=`` (advx.LpBall / advx.Box),
    applied inside that kernel after the update. ``foreach``/``fused``/``capturable``
    are accepted; the fused kernel is always used (and is always capturable on CUDA).
    ``differentiable=True`` runs torch's own step."""


class AdamW(_FusedAdamStep, torch.optim.AdamW):
    """torch.optim.AdamW (decoupled weight decay) with advx's fused step and
    ``constraint=``; see advx.optim.Adam."""
