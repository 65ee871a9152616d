"""Fused multi-tensor optimizer steps: one torch.ops.advx call updates a whole list of
parameters with torch.optim's rule, unscales GradScaler gradients, skips the step when
found_inf is set, and projects onto ``constraint`` (advx.LpBall / advx.Box) in the same
call. Signatures match advx.reference.optim; advx.optim's classes drive these ops."""
from __future__ import annotations

import math
from numbers import Real

import torch

from ..constraints import Constraint
from ._checks import check_like, check_tensor

__all__ = ["sgd_step_", "adagrad_step_", "rmsprop_step_", "adam_step_"]


# ------------------------------------------------------------------ checks

def _tensor_list(tensors, name: str) -> list:
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{name} must be a list of tensors, got {type(tensors).__name__}")
    return list(tensors)


def _check_params(params) -> list:
    params = _tensor_list(params, "params")
    for i, p in enumerate(params):
        check_tensor(p, f"params[{i}]")
        if p.layout != torch.strided:
            raise TypeError(f"params[{i}] must be a dense tensor, got layout {p.layout}")
        if p.device != params[0].device:
            raise ValueError(f"params[{i}] is on {p.device} but params[0] is on {params[0].device}; call once per device")
        if p.dtype != params[0].dtype:
            raise TypeError(f"params[{i}] has dtype {p.dtype} but params[0] has dtype {params[0].dtype}; call once per dtype")
    return params


def _check_list(params, tensors, name: str, *, optional: bool = False) -> list:
    tensors = _tensor_list(tensors, name)
    if optional and not tensors:
        return tensors
    if len(tensors) != len(params):
        raise ValueError(f"{name} has {len(tensors)} tensors but params has {len(params)}")
    for i, (p, t) in enumerate(zip(params, tensors)):
        if isinstance(t, torch.Tensor) and t.layout != torch.strided:
            raise TypeError(f"{name}[{i}] is {t.layout}: sparse gradients are not supported")
        check_like(p, f"params[{i}]", t, f"{name}[{i}]")
    return tensors


def _check_steps(params, steps) -> list:
    steps = _tensor_list(steps, "steps")
    if len(steps) != len(params):
        raise ValueError(f"steps has {len(steps)} tensors but params has {len(params)}")
    for i, (p, s) in enumerate(zip(params, steps)):
        if not isinstance(s, torch.Tensor) or s.numel() != 1 or s.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"steps[{i}] must be a one-element float32/float64 tensor (the step counter)")
        if s.device != p.device:
            raise ValueError(f"steps[{i}] is on {s.device} but params[{i}] is on {p.device}")
    return steps


def _scalar_tensor(value, name: str, device):
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or not value.is_floating_point():
        raise TypeError(f"{name} must be None or a one-element floating point tensor")
    return value.to(device)


def _lr_args(lr, device):
    """(lr float, lr_tensor or None): a tensor lr is read by the kernel on the device."""
    if isinstance(lr, torch.Tensor):
        return 0.0, _scalar_tensor(lr, "lr", device)
    if isinstance(lr, bool) or not isinstance(lr, Real) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr must be a non-negative float or a one-element tensor, got {lr!r}")
    return float(lr), None


def _common(params, lr, grad_scale, found_inf, constraint):
    device = params[0].device if params else torch.device("cpu")
    lr, lr_tensor = _lr_args(lr, device)
    if constraint is not None and not isinstance(constraint, Constraint):
        raise TypeError(f"constraint must be None, an advx.LpBall or an advx.Box, got {type(constraint).__name__}")
    if constraint is None:
        cargs = ([], [], "none", -math.inf, math.inf)
    else:
        constraint.check(params)
        cargs = constraint.kernel_args(params)
    centers, radii, norm, lo, hi = cargs
    return dict(
        lr=lr,
        lr_tensor=lr_tensor,
        grad_scale=_scalar_tensor(grad_scale, "grad_scale", device),
        found_inf=_scalar_tensor(found_inf, "found_inf", device),
        centers=centers,
        radii=radii,
        constraint_norm=norm,
        lo=lo,
        hi=hi,
    )


def _momentum_buffers(params, momentum_buffers):
    """Fills None entries of the caller's list with new buffers; returns the flags that
    tell the kernel which buffers are new (set to the gradient, as torch's first step)."""
    if not isinstance(momentum_buffers, list):
        raise TypeError("momentum_buffers must be a list (None entries are filled with new buffers)")
    if len(momentum_buffers) != len(params):
        raise ValueError(f"momentum_buffers has {len(momentum_buffers)} entries but params has {len(params)}")
    fresh = [b is None for b in momentum_buffers]
    for i, p in enumerate(params):
        if fresh[i]:
            momentum_buffers[i] = torch.zeros_like(p, memory_format=torch.preserve_format)
    _check_list(params, momentum_buffers, "momentum_buffers")
    return fresh


# ------------------------------------------------------------------ ops

def sgd_step_(params, grads, momentum_buffers, *, lr=1e-3, momentum=0.0, dampening=0.0,
              weight_decay=0.0, nesterov=False, maximize=False, grad_scale=None, found_inf=None,
              constraint=None) -> None:
    """torch.optim.SGD's update of every tensor in ``params``, in place, in one call.

    ``momentum_buffers``: a list with a tensor or None per param when momentum != 0 (None
    entries are replaced by new buffers that start as the gradient), else ignored.
    ``lr`` is a float or a one-element tensor; ``grad_scale``/``found_inf`` follow
    GradScaler; ``constraint`` (LpBall/Box) is applied after the update.
    """
    params = _check_params(params)
    grads = _check_list(params, grads, "grads")
    if momentum != 0:
        fresh = _momentum_buffers(params, momentum_buffers)
        bufs = list(momentum_buffers)
    else:
        fresh, bufs = [], []
    args = _common(params, lr, grad_scale, found_inf, constraint)
    with torch.no_grad():
        torch.ops.advx.sgd_step_.default(
            params, grads, bufs, fresh, momentum=float(momentum), dampening=float(dampening),
            weight_decay=float(weight_decay), nesterov=bool(nesterov), maximize=bool(maximize), **args)


def adagrad_step_(params, grads, state_sums, steps, *, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                  eps=1e-10, maximize=False, grad_scale=None, found_inf=None,
                  constraint=None) -> None:
    """torch.optim.Adagrad's update of every tensor in ``params``, in place, in one call;
    ``steps`` are the per-param step counters (incremented unless found_inf is set)."""
    params = _check_params(params)
    grads = _check_list(params, grads, "grads")
    state_sums = _check_list(params, state_sums, "state_sums")
    steps = _check_steps(params, steps)
    args = _common(params, lr, grad_scale, found_inf, constraint)
    with torch.no_grad():
        torch.ops.advx.adagrad_step_.default(
            params, grads, state_sums, steps, lr_decay=float(lr_decay),
            weight_decay=float(weight_decay), eps=float(eps), maximize=bool(maximize), **args)


def rmsprop_step_(params, grads, square_avgs, grad_avgs, momentum_buffers, steps, *, lr=1e-2,
                  alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                  maximize=False, grad_scale=None, found_inf=None, constraint=None) -> None:
    """torch.optim.RMSprop's update of every tensor in ``params``, in place, in one call.
    ``grad_avgs`` is used when ``centered``, ``momentum_buffers`` when momentum > 0 (else
    they may be empty lists)."""
    params = _check_params(params)
    grads = _check_list(params, grads, "grads")
    square_avgs = _check_list(params, square_avgs, "square_avgs")
    grad_avgs = _check_list(params, grad_avgs, "grad_avgs") if centered else []
    momentum_buffers = _check_list(params, momentum_buffers, "momentum_buffers") if momentum > 0 else []
    steps = _check_steps(params, steps)
    args = _common(params, lr, grad_scale, found_inf, constraint)
    with torch.no_grad():
        torch.ops.advx.rmsprop_step_.default(
            params, grads, square_avgs, grad_avgs, momentum_buffers, steps, alpha=float(alpha),
            eps=float(eps), weight_decay=float(weight_decay), momentum=float(momentum),
            centered=bool(centered), maximize=bool(maximize), **args)


def adam_step_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, lr=1e-3,
               beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
               decoupled_weight_decay=False, grad_scale=None, found_inf=None,
               constraint=None) -> None:
    """torch.optim.Adam's (AdamW's with ``decoupled_weight_decay``) update of every tensor
    in ``params``, in place, in one call. ``max_exp_avg_sqs`` is used when ``amsgrad``."""
    params = _check_params(params)
    grads = _check_list(params, grads, "grads")
    exp_avgs = _check_list(params, exp_avgs, "exp_avgs")
    exp_avg_sqs = _check_list(params, exp_avg_sqs, "exp_avg_sqs")
    max_exp_avg_sqs = _check_list(params, max_exp_avg_sqs, "max_exp_avg_sqs") if amsgrad else []
    steps = _check_steps(params, steps)
    args = _common(params, lr, grad_scale, found_inf, constraint)
    with torch.no_grad():
        torch.ops.advx.adam_step_.default(
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, beta1=float(beta1),
            beta2=float(beta2), weight_decay=float(weight_decay), eps=float(eps),
            amsgrad=bool(amsgrad), maximize=bool(maximize),
            decoupled_weight_decay=bool(decoupled_weight_decay), **args)


# ------------------------------------------------------------------ fake kernels
# The ops mutate their inputs and return nothing: the fake kernels have nothing to do.

@torch.library.register_fake("advx::sgd_step_")
def _sgd_step_fake(params, grads, momentum_buffers, init_momentum, **kwargs):
    return None


@torch.library.register_fake("advx::adagrad_step_")
def _adagrad_step_fake(params, grads, state_sums, steps, **kwargs):
    return None


@torch.library.register_fake("advx::rmsprop_step_")
def _rmsprop_step_fake(params, grads, square_avgs, grad_avgs, momentum_buffers, steps, **kwargs):
    return None


@torch.library.register_fake("advx::adam_step_")
def _adam_step_fake(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, **kwargs):
    return None
