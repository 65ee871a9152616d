"""What advx.optim adds to a torch.optim class: `constraint=` and the fused step plumbing
(grouping by device and dtype, step counters on the device, GradScaler attributes); the
step itself is one advx.ops.*_step_ call per bucket."""
from __future__ import annotations

import torch

from ..ops.constraints import check_constraint_type


class FusedOptimizerMixin:
    """Mixed in before a torch.optim class. The torch class keeps its constructor,
    defaults, param_groups, state format and state_dict; the subclass's step() calls one
    fused op per (parameter group, device, dtype)."""

    # GradScaler then hands over `grad_scale` / `found_inf` attributes instead of
    # unscaling the gradients itself; the fused ops honour both.
    _step_supports_amp_scaling = True

    def __init__(self, params, *args, constraint=None, **kwargs):
        super().__init__(params, *args, **kwargs)
        self._setup_constraint(constraint)

    @torch.no_grad()
    def step(self, closure=None):
        """One optimizer step: one fused op call per (param group, device, dtype)."""
        if self._differentiable_fallback():
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._fused_group_step(group)
        return loss

    def _fused_group_step(self, group: dict) -> None:
        raise NotImplementedError

    def _setup_constraint(self, constraint) -> None:
        """Called at the end of __init__: `constraint` becomes a default of every group."""
        check_constraint_type(constraint)
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

    def _buckets(self, group: dict, tensor_lists: list, steps_at: int | None = None):
        """Splits the lists _init_group collected (params first) by the params' (device,
        dtype), as torch does, and yields (lists, indices into params, keyword arguments)
        for one advx.ops call per bucket: the group's lr, GradScaler's tensors and the
        constraint for the bucket's params. Complex tensors are passed as their real views;
        step counters move to the device once (the kernel reads and increments them there:
        a step never syncs)."""
        params = tensor_lists[0]
        if not params:
            return  # no parameter of the group has a gradient: torch.optim does nothing
        keys = self._group_tensors_by_device_and_dtype([params])
        if len(keys) == 1:  # the usual case, without splitting every list
            grouped = {next(iter(keys)): (tensor_lists, range(len(params)))}
        else:
            grouped = self._group_tensors_by_device_and_dtype(tensor_lists, with_indices=True)
        constraint = group.get("constraint")
        # positions in the group of the params _init_group collected (those with a gradient)
        with_grad = None if constraint is None or len(grouped) == 1 and len(params) == len(group["params"]) \
            else [j for j, p in enumerate(group["params"]) if p.grad is not None]
        kwargs = dict(lr=group["lr"], grad_scale=getattr(self, "grad_scale", None),
                      found_inf=getattr(self, "found_inf", None))
        for (device, dtype), (lists, indices) in grouped.items():
            lists = [list(tensors) for tensors in lists]
            if steps_at is not None and device.type != "cpu":
                lists[steps_at] = self._steps_on(device, lists[0], lists[steps_at])
            if dtype.is_complex:
                lists = [ts if j == steps_at else [None if t is None else torch.view_as_real(t) for t in ts]
                         for j, ts in enumerate(lists)]
            kwargs["constraint"] = constraint if with_grad is None else \
                constraint.subset([with_grad[i] for i in indices])
            yield lists, indices, kwargs

    def _steps_on(self, device, params: list, steps: list) -> list:
        if all(s.device == device for s in steps):
            return steps
        moved = []
        for p, s in zip(params, steps):
            if s.device != device:
                s = self.state[p]["step"] = s.to(device)
            moved.append(s)
        return moved


def _check_group_constraint(group: dict) -> None:
    constraint = group.get("constraint")
    check_constraint_type(constraint)
    if constraint is not None:
        constraint.check(group["params"])
