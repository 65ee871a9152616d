"""Plain-PyTorch optimizer steps with the signatures of advx.ops.*_step_: one tensor at a
time, in torch.optim's operation order, then the constraint with reference.project_."""
from __future__ import annotations

import math

import torch

from . import exact
from .project import project_, project_onto_

__all__ = ["sgd_step_", "adagrad_step_", "rmsprop_step_", "adam_step_"]


def _skipped(found_inf) -> bool:
    return found_inf is not None and float(found_inf) != 0.0


def _grad(g, grad_scale, maximize):
    if grad_scale is not None:
        g = g / float(grad_scale)
    return -g if maximize else g


def _each(params, grads, grad_scale, maximize, weight_decay=0.0, steps=None):
    """(i, p, g) per param, in torch.optim's order: g unscaled and negated for maximize,
    the step counter advanced, then the L2 weight decay added (0: none)."""
    for i, (p, g) in enumerate(zip(params, grads)):
        g = _grad(g, grad_scale, maximize)
        if steps is not None:
            steps[i] += 1
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        yield i, p, g


def _constrain_(params, constraint) -> None:
    """p = clamp(center + project(p - center, eps, norm), lo, hi), per sample along dim 0,
    read from the constraint's public fields: norm ("none": the box alone), centers (None
    or one per param), eps (or radii, one per param), lo and hi."""
    if constraint is None:
        return
    norm, centers = constraint.norm, constraint.centers
    radii = getattr(constraint, "radii", None)
    for i, p in enumerate(params):
        if p.numel() == 0:
            continue
        lo, hi = exact.box_bounds((constraint.lo, constraint.hi), p.dtype)  # inward, in p's dtype
        if norm == "none":
            p.clamp_(lo, hi)
            continue
        eps = constraint.eps if radii is None else radii[i]
        center = centers[i] if centers else torch.zeros_like(p)
        batch = p.shape[0] if p.dim() else 1
        if getattr(constraint, "exact", False) and norm != "linf":  # onto ball ∩ box
            q = p.reshape(batch, -1).clone()
            project_onto_(q, center.reshape(batch, -1), eps, norm, (constraint.lo, constraint.hi))
            p.copy_(q.reshape(p.shape))
            continue
        delta = (p - center).reshape(batch, -1)
        project_(delta, eps, norm)
        p.copy_(center + delta.reshape(p.shape)).clamp_(lo, hi)
        into = exact.into_linf_ if norm == "linf" else exact.into_l2_
        inside = into(p.reshape(batch, -1).clone(), center.reshape(batch, -1), exact.radius(eps, delta))
        p.copy_(inside.reshape(p.shape))


@torch.no_grad()
def sgd_step_(params, grads, momentum_buffers, *, lr=1e-3, momentum=0.0, dampening=0.0,
              weight_decay=0.0, nesterov=False, maximize=False, grad_scale=None, found_inf=None,
              constraint=None):
    if _skipped(found_inf):
        return
    lr = float(lr)
    for i, p, g in _each(params, grads, grad_scale, maximize, weight_decay):
        if momentum != 0:
            buf = momentum_buffers[i]
            if buf is None:  # first step: the buffer starts as the gradient
                momentum_buffers[i] = buf = g.clone()
            else:
                buf.mul_(momentum).add_(g, alpha=1 - dampening)
            g = g.add(buf, alpha=momentum) if nesterov else buf
        p.add_(g, alpha=-lr)
    _constrain_(params, constraint)


@torch.no_grad()
def adagrad_step_(params, grads, state_sums, steps, *, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                  eps=1e-10, maximize=False, grad_scale=None, found_inf=None, constraint=None):
    if _skipped(found_inf):
        return
    lr = float(lr)
    for i, p, g in _each(params, grads, grad_scale, maximize, weight_decay, steps):
        step = float(steps[i])
        clr = lr / (1 + (step - 1) * lr_decay)
        state_sums[i].addcmul_(g, g, value=1)
        std = state_sums[i].sqrt().add_(eps)
        p.addcdiv_(g, std, value=-clr)
    _constrain_(params, constraint)


@torch.no_grad()
def rmsprop_step_(params, grads, square_avgs, grad_avgs, momentum_buffers, steps, *, lr=1e-2,
                  alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                  maximize=False, grad_scale=None, found_inf=None, constraint=None):
    if _skipped(found_inf):
        return
    lr = float(lr)
    for i, p, g in _each(params, grads, grad_scale, maximize, weight_decay, steps):
        square_avg = square_avgs[i]
        square_avg.mul_(alpha).addcmul_(g, g, value=1 - alpha)
        if centered:
            grad_avgs[i].lerp_(g, 1 - alpha)
            avg = square_avg.addcmul(grad_avgs[i], grad_avgs[i], value=-1).sqrt_()
        else:
            avg = square_avg.sqrt()
        avg = avg.add_(eps)
        if momentum > 0:
            buf = momentum_buffers[i]
            buf.mul_(momentum).addcdiv_(g, avg)
            p.add_(buf, alpha=-lr)
        else:
            p.addcdiv_(g, avg, value=-lr)
    _constrain_(params, constraint)


@torch.no_grad()
def adam_step_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, lr=1e-3,
               beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
               decoupled_weight_decay=False, grad_scale=None, found_inf=None, constraint=None):
    if _skipped(found_inf):
        return
    lr = float(lr)
    coupled = 0.0 if decoupled_weight_decay else weight_decay
    for i, p, g in _each(params, grads, grad_scale, maximize, coupled, steps):
        step = float(steps[i])
        if decoupled_weight_decay and weight_decay != 0:
            p.mul_(1 - lr * weight_decay)
        exp_avg, exp_avg_sq = exp_avgs[i], exp_avg_sqs[i]
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        second = exp_avg_sq
        if amsgrad:
            torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
            second = max_exp_avg_sqs[i]
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        denom = (second.sqrt() / math.sqrt(bias_correction2)).add_(eps)
        p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
    _constrain_(params, constraint)
