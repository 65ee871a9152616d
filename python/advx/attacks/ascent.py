"""Unconstrained and box-constrained attacks: plain gradient ascent until the label
flips, and the penalized form ``min c*||eta||_2 + loss(x + eta, target)``."""
from __future__ import annotations

import torch

from .. import _validate
from ..ops.constraints import Box
from .base import Attack, AttackResult, clamp_box, per_sample, sample_norms
from .pgd import OPTIMIZERS, check_optimizer, make_optimizer

__all__ = ["GradientAscent", "BoxConstrained"]


class GradientAscent(Attack):
    """``x <- x + lr * grad_x loss(f(x), y)`` for ``steps`` steps, no budget, inside the
    pixel box ``bounds`` (``bounds=None`` drops the box too, which measures how far the
    nearest adversarial point is).

    ``early_stop`` (default) freezes each sample as soon as its label has flipped,
    so the result is the first adversarial iterate; ``norm`` reports its L2 distance.
    """

    name = "GradientAscent"
    norm = "l2"

    def __init__(self, model, lr, steps: int, *, early_stop: bool = True, targeted: bool = False,
                 bounds=(0.0, 1.0)):
        super().__init__(model, targeted=targeted, bounds=bounds)
        self.lr = _validate.budget(lr, "lr")
        self.steps = _validate.steps(steps)
        self.early_stop = bool(early_stop)

    def _attack(self, images, labels, record_loss, report=True) -> AttackResult:
        lr = per_sample(self.lr.to(images.device) if isinstance(self.lr, torch.Tensor) else self.lr, images)

        def update(x, grad):
            with torch.no_grad():
                clamp_box(x.add_(lr * grad), self.bounds)

        x_adv = images.clone().requires_grad_(True)
        return self._loop(images, labels, x_adv, self.steps, update, record_loss=record_loss, report=report,
                          early_stop=self.early_stop, mean_grad=False)


class BoxConstrained(Attack):
    """The optimization attack of Szegedy et al.: ``min_eta c*||eta||_2 + CE(x + eta, target)``
    subject to ``x + eta`` in ``bounds``, with an advx.optim optimizer.

    ``targeted=False`` maximizes the true label's loss instead:
    ``min c*||eta||_2 - CE(x + eta, y)``. ``c`` may be a ``[B]`` tensor.
    """

    name = "BoxConstrained"
    norm = "l2"

    def __init__(self, model, c, steps: int, *, optimizer: str = "adam", lr: float = 0.01,
                 targeted: bool = True, early_stop: bool = False, bounds=(0.0, 1.0)):
        super().__init__(model, targeted=targeted, bounds=bounds)
        self.c = _validate.budget(c, "c")
        self.steps = _validate.steps(steps)
        self.optimizer = check_optimizer(optimizer, OPTIMIZERS[1:])
        self.lr = _validate.budget(lr, "lr")
        if isinstance(self.lr, torch.Tensor):
            raise TypeError("lr must be a float (the optimizers take one learning rate)")
        self.early_stop = bool(early_stop)

    def _objective(self, images, x_adv, logits, labels):
        ascend, ce = super()._objective(images, x_adv, logits, labels)
        c = self.c.to(x_adv.device, x_adv.dtype) if isinstance(self.c, torch.Tensor) else self.c
        penalty = c * sample_norms(x_adv - images, "l2")
        return ascend - penalty, ce

    def _attack(self, images, labels, record_loss, report=True) -> AttackResult:
        if isinstance(self.c, torch.Tensor) and self.c.dim() == 1 and self.c.shape[0] != images.shape[0]:
            raise ValueError(f"c has {self.c.shape[0]} per-sample values but images has {images.shape[0]} samples")
        x_adv = images.clone().requires_grad_(True)
        opt = make_optimizer(self.optimizer, [x_adv], self.lr, maximize=True,
                             constraint=None if self.bounds is None else Box(*self.bounds))

        def update(x, grad):
            x.grad = grad
            opt.step()
            x.grad = None

        return self._loop(images, labels, x_adv, self.steps, update, record_loss=record_loss, report=report,
                          early_stop=self.early_stop, mean_grad=False)
