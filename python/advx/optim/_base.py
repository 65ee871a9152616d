"""What advx.optim adds to a torch.optim class: `constraint=` and the fused step plumbing
(grouping by device and dtype, step counters on the device, GradScaler attributes)."""
from __future__ import annotations

import math

import torch

from ..constraints import Constraint


class FusedOptimizerMixin:
    """Mixed in before a torch.optim class. The torch class keeps its constructor,
    defaults, param_groups, state format and state_dict; the subclass's step() calls one
    fused op per (parameter group, device, dtype)."""

    # GradScaler then hands over `grad_scale` / `found_inf` attributes instead of
    # unscaling the gradients itself; the fused ops honour both.
    _step_supports_amp_scaling = True

    def _setup_constraint(self, constraint) -> None:
        """Called at the end of __init__: `constraint` becomes a default of every group."""
        _check_constraint_type(constraint)
        self.defaults["constraint"] = constraint
        for group in self.param_groups:
            group.setdefault("constraint", constraint)
            _check_group_constraint(group)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group.get("constraint") is not None:
            _check_group_constraint(group)

    # The constraint is configuration, not optimizer state: it stays out of state_dict()
    # (which then loads into torch.optim) and survives load_state_dict().
    def state_dict(self):
        state = super().state_dict()
        for group in state["param_groups"]:
            group.pop("constraint", None)
        return state

    def load_state_dict(self, state_dict) -> None:
        constraints = [group.get("constraint") for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, constraint in zip(self.param_groups, constraints):
            group["constraint"] = constraint

    def _differentiable_fallback(self) -> bool:
        """differentiable=True asks for autograd through the step, which the fused ops do
        not provide: such optimizers run torch.optim's own step (without constraints)."""
        if not any(group.get("differentiable", False) for group in self.param_groups):
            return False
        if any(group.get("constraint") is not None for group in self.param_groups):
            raise RuntimeError("constraint= is not supported with differentiable=True")
        return True

    def _amp_tensors(self, device):
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        return (None if grad_scale is None else grad_scale.to(device),
                None if found_inf is None else found_inf.to(device))


def buckets(params: list) -> dict:
    """Indices of `params` grouped by (device, dtype): one fused call per bucket."""
    out: dict = {}
    for i, p in enumerate(params):
        out.setdefault((p.device, p.dtype), []).append(i)
    return out


def positions_with_grad(group: dict) -> list:
    """Positions in group['params'] of the params torch's _init_group collects."""
    return [j for j, p in enumerate(group["params"]) if p.grad is not None]


def real(t):
    """Complex tensors are updated as their real views, as torch.optim does."""
    return torch.view_as_real(t) if t is not None and t.is_complex() else t


def pick(tensors: list, index: list) -> list:
    return [real(tensors[i]) for i in index] if tensors else []


def device_steps(state: dict, params: list, index: list) -> list:
    """The step counters of `params[index]` on their params' device (moved there once:
    the kernel reads and increments them on the device, so a step never syncs)."""
    steps = []
    for i in index:
        p = params[i]
        st = state[p]
        if st["step"].device != p.device:
            st["step"] = st["step"].to(p.device)
        steps.append(st["step"])
    return steps


def lr_args(lr, device):
    """(lr float, lr_tensor or None) for the fused ops."""
    if isinstance(lr, torch.Tensor):
        return 0.0, lr.to(device)
    return float(lr), None


def constraint_args(group: dict, params: list, positions: list) -> dict:
    constraint = group.get("constraint")
    if constraint is None:
        return dict(centers=[], radii=[], constraint_norm="none", lo=-math.inf, hi=math.inf)
    centers, radii, norm, lo, hi = constraint.kernel_args(params, positions)
    return dict(centers=centers, radii=radii, constraint_norm=norm, lo=lo, hi=hi)


def _check_constraint_type(constraint) -> None:
    if constraint is not None and not isinstance(constraint, Constraint):
        raise TypeError(f"constraint must be None, an advx.LpBall or an advx.Box, got {type(constraint).__name__}")


def _check_group_constraint(group: dict) -> None:
    constraint = group.get("constraint")
    _check_constraint_type(constraint)
    if constraint is not None:
        constraint.check(group["params"])
