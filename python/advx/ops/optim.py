"""Fused multi-tensor optimizer steps: one torch.ops.advx call updates a whole list of
parameters with torch.optim's rule, unscales GradScaler gradients, skips the step when
found_inf is set, and projects onto ``constraint`` (advx.LpBall / advx.Box) in the same
call. Signatures match advx.reference.optim; advx.optim's classes drive these ops."""
from __future__ import annotations

import math

import torch
from torch.utils.weak import WeakIdKeyDictionary

from .. import _validate
from .constraints import check_constraint_type

__all__ = ["sgd_step_", "adagrad_step_", "rmsprop_step_", "adam_step_"]

# The tensors are the kernels' to check (csrc/optim/optim_lists.h: dtypes, shapes, devices
# and lengths of every list, named); what is checked here are the Python arguments.

_NO_CONSTRAINT = dict(centers=[], radii=[], constraint_norm="none", lo=-math.inf, hi=math.inf)


# A tensor lr's value is checked once per version of the tensor (a scheduler writing it
# in place bumps the version), never during CUDA graph capture and never on meta/fake
# tensors: on a GPU the check is a host sync, which a step must not pay every time.
_checked_lr = WeakIdKeyDictionary()


def _check_lr_value(lr: torch.Tensor) -> None:
    if not _validate.has_values(lr) or (lr.is_cuda and torch.cuda.is_current_stream_capturing()):
        return
    if _checked_lr.get(lr) == lr._version:
        return
    value = float(lr)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"lr must be non-negative and finite, got a tensor holding {value}")
    _checked_lr[lr] = lr._version


def _on(value, device):
    """A one-element tensor argument (or None) on the params' device."""
    return value if value is None or device is None else value.to(device)


def _call_args(params: list, lr, grad_scale, found_inf, constraint) -> dict:
    """The keyword arguments every optimizer op takes besides its own hyper-parameters:
    lr (a tensor lr is read by the kernel on the device), GradScaler's grad_scale and
    found_inf on the params' device, and the constraint as the kernel takes it."""
    device = params[0].device if params and isinstance(params[0], torch.Tensor) else None
    lr = _validate.learning_rate(lr)
    if isinstance(lr, torch.Tensor):
        _check_lr_value(lr)
    args = dict(lr=0.0, lr_tensor=_on(lr, device)) if isinstance(lr, torch.Tensor) else dict(lr=lr, lr_tensor=None)
    for name, value in (("grad_scale", grad_scale), ("found_inf", found_inf)):
        args[name] = None if value is None else _on(_validate.scalar_tensor(value, name), device)
    if constraint is None:
        args.update(_NO_CONSTRAINT)
        return args
    check_constraint_type(constraint)
    constraint.check(params)
    centers, radii, norm, lo, hi = constraint.kernel_args(params)
    args.update(centers=centers, radii=radii, constraint_norm=norm, lo=lo, hi=hi)
    return args


def _new_momentum_buffers(params: list, momentum_buffers) -> list:
    """Fills the None entries of the caller's list with new buffers; returns the flags
    that tell the kernel which buffers are new (it sets them to the gradient, as
    torch.optim.SGD's first step does)."""
    if not isinstance(momentum_buffers, list):
        raise TypeError("momentum_buffers must be a list (None entries are filled with new buffers), "
                        f"got {type(momentum_buffers).__name__}")
    new = [buf is None for buf in momentum_buffers]
    for i, (p, is_new) in enumerate(zip(params, new)):
        if is_new:
            momentum_buffers[i] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return new


def _tensor_lists(**lists) -> list:
    """The op's tensor lists, in order, each checked to be a list (the kernel checks the rest)."""
    return [_validate.tensor_list(tensors, name) for name, tensors in lists.items()]


def _call(op, lists: list, lr, grad_scale, found_inf, constraint, **hyper) -> None:
    """``op(*lists, **hyper)`` plus the arguments every optimizer op shares. No tensor in
    any list is nothing to update, as in torch.optim (and nothing to dispatch on)."""
    if not any(lists):
        return
    args = _call_args(lists[0], lr, grad_scale, found_inf, constraint)
    with torch.no_grad():
        op(*lists, **hyper, **args)


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
    params, grads = _validate.tensor_list(params, "params"), _validate.tensor_list(grads, "grads")
    if momentum != 0:
        new = _new_momentum_buffers(params, momentum_buffers)
    else:
        momentum_buffers, new = [], []
    _call(torch.ops.advx.sgd_step_.default, [params, grads, momentum_buffers, new], lr, grad_scale,
          found_inf, constraint, momentum=float(momentum), dampening=float(dampening),
          weight_decay=float(weight_decay), nesterov=bool(nesterov), maximize=bool(maximize))


def adagrad_step_(params, grads, state_sums, steps, *, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                  eps=1e-10, maximize=False, grad_scale=None, found_inf=None,
                  constraint=None) -> None:
    """torch.optim.Adagrad's update of every tensor in ``params``, in place, in one call;
    ``steps`` are the per-param step counters (incremented unless found_inf is set)."""
    lists = _tensor_lists(params=params, grads=grads, state_sums=state_sums, steps=steps)
    _call(torch.ops.advx.adagrad_step_.default, lists, lr, grad_scale, found_inf, constraint,
          lr_decay=float(lr_decay), weight_decay=float(weight_decay), eps=float(eps), maximize=bool(maximize))


def rmsprop_step_(params, grads, square_avgs, grad_avgs, momentum_buffers, steps, *, lr=1e-2,
                  alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                  maximize=False, grad_scale=None, found_inf=None, constraint=None) -> None:
    """torch.optim.RMSprop's update of every tensor in ``params``, in place, in one call.
    ``grad_avgs`` is used when ``centered``, ``momentum_buffers`` when momentum > 0 (else
    they may be empty lists)."""
    lists = _tensor_lists(params=params, grads=grads, square_avgs=square_avgs,
                          grad_avgs=grad_avgs if centered else [],
                          momentum_buffers=momentum_buffers if momentum > 0 else [], steps=steps)
    _call(torch.ops.advx.rmsprop_step_.default, lists, lr, grad_scale, found_inf, constraint,
          alpha=float(alpha), eps=float(eps), weight_decay=float(weight_decay), momentum=float(momentum),
          centered=bool(centered), maximize=bool(maximize))


def adam_step_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, lr=1e-3,
               beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
               decoupled_weight_decay=False, grad_scale=None, found_inf=None,
               constraint=None) -> None:
    """torch.optim.Adam's (AdamW's with ``decoupled_weight_decay``) update of every tensor
    in ``params``, in place, in one call. ``max_exp_avg_sqs`` is used when ``amsgrad``."""
    lists = _tensor_lists(params=params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs,
                          max_exp_avg_sqs=max_exp_avg_sqs if amsgrad else [], steps=steps)
    _call(torch.ops.advx.adam_step_.default, lists, lr, grad_scale, found_inf, constraint,
          beta1=float(beta1), beta2=float(beta2), weight_decay=float(weight_decay), eps=float(eps),
          amsgrad=bool(amsgrad), maximize=bool(maximize), decoupled_weight_decay=bool(decoupled_weight_decay))


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
