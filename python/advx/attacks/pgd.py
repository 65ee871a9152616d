"""PGD (L-inf / L2, any optimizer on the perturbation) and FGSM, its one-step case.

``optimizer="sign"`` is the classic attack: one fused ``advx.ops.pgd_step_`` per
iteration (sign or normalized gradient step, projection onto the ball, box clamp).
The other optimizers run ``advx.optim`` with the ball-and-box constraint fused into
their step.
"""
from __future__ import annotations

import torch

from .. import _validate, ops, optim
from ..ops.constraints import LpBall
from .base import Attack, AttackResult, clamp_box, per_sample, sample_norms
from .stream import run_items

__all__ = ["PGD", "FGSM", "OPTIMIZERS"]

OPTIMIZERS = ("sign", "sgd", "momentum", "adagrad", "rmsprop", "adam")


def make_optimizer(optimizer: str, params, lr: float, *, maximize: bool, constraint=None):
    """An advx.optim optimizer over ``params`` with default hyper-parameters."""
    kwargs = dict(lr=lr, maximize=maximize, constraint=constraint)
    if optimizer == "sgd":
        return optim.SGD(params, **kwargs)
    if optimizer == "momentum":
        return optim.SGD(params, momentum=0.9, **kwargs)
    if optimizer == "adagrad":
        return optim.Adagrad(params, **kwargs)
    if optimizer == "rmsprop":
        return optim.RMSprop(params, **kwargs)
    if optimizer == "adam":
        return optim.Adam(params, **kwargs)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS[1:]}, got {optimizer!r}")


def check_optimizer(optimizer, allowed=OPTIMIZERS) -> str:
    if optimizer not in allowed:
        raise ValueError(f"optimizer must be one of {allowed}, got {optimizer!r}")
    return optimizer


class PGD(Attack):
    """Projected gradient ascent on the cross-entropy inside an ``eps`` ball.

    ``norm``: "linf", "l2" or "l1". L1 takes the sparse steepest-ascent step (the sign of
    the gradient on its ``l1_sparsity`` fraction of largest coordinates, unit L1 norm)
    and the exact projection onto the L1 ball and the box (``advx.ops.project_onto_``).

    ``alpha`` (the step of ``optimizer="sign"``) defaults to ``2.5 * eps / steps``;
    ``lr`` (the other optimizers) defaults to ``alpha``. ``eps`` may be a ``[B]``
    tensor: one budget per sample. ``early_stop`` freezes samples once adversarial.
    Random start: uniform in the L-inf ball, or uniform in the L2 ball (normal
    direction, radius ``eps * U**(1/d)``), then clamped to ``bounds``.
    """

    name = "PGD"

    def __init__(self, model, eps, alpha=None, steps: int = 10, norm: str = "linf", *,
                 random_start: bool = True, targeted: bool = False, optimizer: str = "sign",
                 lr=None, early_stop: bool = False, bounds=(0.0, 1.0), seed=None, l1_sparsity: float = 0.05):
        super().__init__(model, targeted=targeted, bounds=bounds)
        self.eps = _validate.budget(eps, "eps")
        self.alpha = _validate.budget(alpha, "alpha", allow_none=True)
        self.steps = _validate.steps(steps)
        self.norm = _validate.norm(norm, _validate.L1_NORMS)
        if not 0.0 < float(l1_sparsity) <= 1.0:
            raise ValueError(f"l1_sparsity must lie in (0, 1], got {l1_sparsity}")
        self.l1_sparsity = float(l1_sparsity)
        if self.norm == "l1" and optimizer != "sign":
            raise ValueError("norm='l1' takes optimizer='sign' (the sparse steepest-ascent step) only")
        self.random_start = bool(random_start)
        self.optimizer = check_optimizer(optimizer)
        self.lr = _validate.budget(lr, "lr", allow_none=True)
        if isinstance(self.lr, torch.Tensor):
            raise TypeError("lr must be a float (the optimizers take one learning rate), got a tensor")
        if self.lr is not None and self.optimizer == "sign":
            raise ValueError("lr is the learning rate of optimizer='sgd'|'momentum'|'adagrad'|'rmsprop'|'adam'; "
                             "the step of optimizer='sign' is alpha")
        self.early_stop = bool(early_stop)
        self.seed = _validate.seed(seed)

    def _alpha(self, eps):
        return self.alpha if self.alpha is not None else 2.5 * eps / self.steps

    def _lr(self, eps, dtype: torch.dtype) -> float:
        if self.lr is not None:
            lr = float(self.lr)
        else:
            alpha = self._alpha(eps)
            lr = float(alpha.max()) if isinstance(alpha, torch.Tensor) else float(alpha)
        # the optimizers' first steps scale lr by up to ~10 (bias corrections, 1/sqrt of a
        # small average): a huge budget's lr is capped so that no step overflows the dtype
        # (the projection takes the iterate back into the ball either way)
        return min(lr, torch.finfo(dtype).max * 1e-6)

    def _start(self, images: torch.Tensor, eps) -> torch.Tensor:
        """The random start. Seeded: each sample's numbers come from (seed, its index)
        (advx._rng), whatever the batch; seed=None: torch's global RNG, drawn as
        torchattacks draws it."""
        x = images.clone()
        if not self.random_start:
            return x
        rng = self._random("start")
        shape, batch, dtype = images.shape[1:], images.shape[0], images.dtype

        def uniform_pm1():  # [B, ...] uniform in (-1, 1)
            if rng is None:
                return torch.empty_like(images).uniform_(-1.0, 1.0)
            return rng.uniform(shape, 0, dtype=dtype) * 2 - 1

        def radius_draw():  # [B] uniform in (0, 1)
            if rng is None:
                return torch.rand(batch, device=images.device, dtype=dtype)
            return rng.uniform((), 1, dtype=dtype)

        # a finite budget too large for the dtype (1e39 in float32) draws in a range it can hold
        largest = torch.finfo(images.dtype).max / 4
        eps = min(eps, largest) if isinstance(eps, float) else eps.clamp(max=largest)
        if self.norm == "linf":
            if rng is None and isinstance(eps, float):
                noise = torch.empty_like(images).uniform_(-eps, eps)  # the draw torchattacks makes
            else:
                noise = uniform_pm1().mul_(per_sample(eps, images))
        elif self.norm == "l1":  # uniform direction on the L1 sphere (Laplace, normalized), radius eps U^(1/d)
            dims = images[0].numel()
            if rng is None:
                noise = torch.empty_like(images).exponential_().mul_(
                    torch.randint(0, 2, images.shape, device=images.device).to(dtype) * 2 - 1)
            else:
                noise = -torch.log(rng.uniform(shape, 2, dtype=dtype)) * rng.signs(shape, 3, dtype=dtype)
            radius = per_sample(radius_draw().pow_(1.0 / dims), images) * per_sample(eps, images)
            noise.div_(per_sample(sample_norms(noise, "l1").clamp_min(1e-30), images)).mul_(radius)
            x = clamp_box(x.add_(noise), self.bounds)
            eps_b = _validate.budget_tensor(eps, "eps", images)
            return ops.project_onto_(x, images, eps_b, "l1", self.bounds)  # exact in the dtype
        else:
            dims = images[0].numel()
            noise = torch.empty_like(images).normal_() if rng is None else rng.normal(shape, 2, dtype=dtype)
            radius = per_sample(radius_draw().pow_(1.0 / dims), images) * per_sample(eps, images)
            # the unit direction first: radius * eps / norm could overflow
            noise.div_(per_sample(sample_norms(noise, "l2").clamp_min(1e-30), images)).mul_(radius)
        return clamp_box(x.add_(noise), self.bounds)

    def _attack(self, images, labels, record_loss, report=True) -> AttackResult:
        eps = self.eps.to(images.device) if isinstance(self.eps, torch.Tensor) else self.eps
        if self.optimizer == "sign" and not record_loss and (self.early_stop or self._batch_size is not None):
            return self._streamed(images, labels, eps, report)
        x_adv = self._start(images, eps).requires_grad_(True)
        if self.optimizer == "sign":
            # the budgets as the kernel reads them, made once, not at every step
            eps_b = _validate.budget_tensor(eps, "eps", images)
            alpha_b = _validate.budget_tensor(self._alpha(eps), "alpha", images)

            def update(x, grad):
                ops.pgd_step_(x, grad, images, eps_b, alpha_b, self.norm, self.bounds)

            if self.norm == "l1":
                update = self._l1_update(images, eps_b, alpha_b)

            # unseeded, the batch mean's gradient, as torchattacks takes it (bit parity);
            # seeded, the sum's: each sample's own gradient, the same bits in any batch
            mean_grad = self.seed is None
        else:
            opt = make_optimizer(self.optimizer, [x_adv], self._lr(eps, images.dtype), maximize=True,
                                 constraint=LpBall(center=images, eps=eps, norm=self.norm, bounds=self.bounds))

            def update(x, grad):
                x.grad = grad
                opt.step()
                x.grad = None

            mean_grad = False
        return self._loop(images, labels, x_adv, self.steps, update, record_loss=record_loss, report=report,
                          early_stop=self.early_stop, mean_grad=mean_grad)


    def _streamed(self, images, labels, eps, report) -> AttackResult:
        """The sign-step attack continuously batched (advx.attacks.stream): each sample a
        work item that leaves the batch once an iterate fools the model (that iterate is
        its result: fooled at any iterate), its slot refilled from the queue."""
        run = _Samples(self, images, labels, eps)
        run_items(run, torch.arange(images.shape[0], device=images.device), self._batch_size or images.shape[0])
        if not report:
            return AttackResult(adv=run.adv, success=None, loss=None, norm=None, first_success=None,
                                zero_grad=run.zero_grad, nonfinite=run.nonfinite)
        _, ce, success, bad = self._final_pass(images, run.adv, labels)
        first = torch.where(success & (run.first < 0), self.steps, run.first)
        return AttackResult(adv=run.adv, success=success, loss=ce.to(images.dtype),
                            norm=sample_norms(run.adv - images, self.norm), first_success=torch.where(success, first, -1),
                            zero_grad=run.zero_grad, nonfinite=run.nonfinite | bad)

    def _l1_update(self, images, eps_b, alpha_b):
        """The sparse L1 steepest-ascent step: the sign of the gradient on its
        ``l1_sparsity`` fraction of largest-magnitude coordinates, scaled to unit L1 norm,
        times alpha; then the exact projection onto the L1 ball and the box."""
        batch = images.shape[0]
        k = max(1, int(round(self.l1_sparsity * images[0].numel())))
        alpha = alpha_b.to(images.dtype).reshape(-1, *([1] * (images.dim() - 1)))

        def update(x, grad):
            with torch.no_grad():
                flat = grad.reshape(batch, -1)
                top = flat.abs().topk(k, dim=1).indices
                step = torch.zeros_like(flat).scatter_(1, top, flat.gather(1, top).sign() / k)
                x.add_(alpha * step.reshape(x.shape))
                ops.project_onto_(x, images, eps_b, "l1", self.bounds)

        return update


class FGSM(PGD):
    """The fast gradient method: one step of length ``eps`` from the clean image,
    then into ``bounds``. ``norm="linf"`` is FGSM, ``clamp(x + eps * sign(grad))``;
    ``"l2"`` steps ``eps * grad / ||grad||_2`` (the L2 fast gradient method) and
    ``"l1"`` takes PGD's sparse L1 step; each is one step of PGD in that norm with
    ``alpha = eps`` and no random start (targeted: down the target's loss)."""

    name = "FGSM"

    def __init__(self, model, eps, *, norm: str = "linf", targeted: bool = False, bounds=(0.0, 1.0)):
        super().__init__(model, eps, alpha=None, steps=1, norm=norm, random_start=False,
                         targeted=targeted, bounds=bounds)
        if self.norm != "linf":
            self.name = "FGM"  # the sign belongs to L-inf only

    def _alpha(self, eps):
        return eps


class _Samples:
    """PGD's samples as work items of advx.attacks.stream: per row its iterate, its step
    count and the first iterate that fooled the model. The step is each sample's own
    gradient (of the sum), so a row's iterates do not depend on the rest of the batch."""

    def __init__(self, atk: PGD, images, labels, eps):
        self.atk, self.images, self.labels = atk, images, labels
        self.col = (-1,) + (1,) * (images.dim() - 1)
        self.starts = atk._start(images, eps)  # every sample's start, drawn as the batch attack draws it
        self.eps_b = _validate.budget_tensor(eps, "eps", images)
        self.alpha_b = _validate.budget_tensor(atk._alpha(eps), "alpha", images)
        self.adv = images.clone()
        batch, device = images.shape[0], images.device
        self.first = torch.full((batch,), -1, dtype=torch.int64, device=device)
        self.zero_grad = torch.zeros(batch, dtype=torch.bool, device=device)
        self.nonfinite = torch.zeros(batch, dtype=torch.bool, device=device)
        self.checked = False

    def admissible(self, items):
        everything = torch.ones_like(items, dtype=torch.bool)
        return everything, ~everything

    def admit(self, items):
        n, device = items.shape[0], items.device
        x = self.starts[items].clone()
        return {"item": items, "x": x, "fooled_point": x.clone(),
                "i": torch.zeros(n, dtype=torch.int64, device=device),
                "first": torch.full((n,), -1, dtype=torch.int64, device=device),
                "zero_grad": torch.zeros(n, dtype=torch.bool, device=device),
                "nonfinite": torch.zeros(n, dtype=torch.bool, device=device)}

    def step(self, st):
        atk, item, col = self.atk, st["item"], self.col
        x0, labels = self.images[item], self.labels[item]
        x = st["x"].requires_grad_(True)
        grad, bad, zero, success, _ = atk._gradient_at(x0, x, labels, first_pass=not self.checked, mean_grad=False)
        self.checked = True
        x = x.detach()
        st["nonfinite"] |= bad
        st["zero_grad"] |= zero
        newly = success & (st["first"] < 0)
        st["first"] = torch.where(newly, st["i"], st["first"])
        st["fooled_point"] = torch.where(newly.reshape(col), x, st["fooled_point"])
        eps_b, alpha_b = self.eps_b[item], self.alpha_b[item]
        if atk.norm == "l1":
            atk._l1_update(x0, eps_b, alpha_b)(x, grad)
        else:
            ops.pgd_step_(x, grad, x0, eps_b, alpha_b, atk.norm, atk.bounds)
        st["x"] = x
        st["i"] += 1
        out_of_steps = st["i"] >= atk.steps
        return (st["first"] >= 0) | out_of_steps if atk._early_exit else out_of_steps

    def retire(self, st):
        item = st["item"]
        fooled = st["first"] >= 0
        self.atk._finished(fooled.sum(), (~fooled).sum())
        self.adv[item] = torch.where(fooled.reshape(self.col), st["fooled_point"], st["x"])
        self.first[item] = st["first"]
        self.zero_grad[item] = st["zero_grad"]
        self.nonfinite[item] = st["nonfinite"]
