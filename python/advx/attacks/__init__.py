"""Adversarial attacks in pixel space: ``adv = atk(images, labels)`` or
``res = atk.run(images, labels)`` for per-sample success, loss, norm and the step
of first success. All of them run one loop (``base.Attack._loop``); the hot path
is ``advx.ops.pgd_step_`` or an ``advx.optim`` optimizer with a fused constraint."""
from .apgd import APGD, APGDT
from .ascent import BoxConstrained, GradientAscent
from .base import Attack, AttackResult, least_likely_targets, random_targets
from .pgd import FGSM, OPTIMIZERS, PGD
from .square import Square

__all__ = ["Attack", "AttackResult", "FGSM", "PGD", "APGD", "APGDT", "Square", "GradientAscent", "BoxConstrained",
           "OPTIMIZERS", "random_targets", "least_likely_targets"]
