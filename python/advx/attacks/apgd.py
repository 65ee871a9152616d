"""APGD and APGD-T (Croce & Hein, ICML 2020): step-size-free PGD with momentum, the attacks
at the head of AutoAttack's standard evaluation.

Per sample: a random start in the ball; step size 2*eps; the momentum step
``z = P(x + eta * step(g))``, ``x_new = P(x + a (z - x) + (1 - a)(x - x_prev))`` with
a = 1 on the first iteration and 0.75 after; checkpoints after 22 % of the iterations,
the gap shrinking by 3 % of them down to 6 %. At a checkpoint a sample halves its step
and restarts from its best point if its loss increased in at most ``rho`` of the steps
since the last checkpoint, or if its step was not halved last time and its best loss has
not improved. Each iteration is one fused op (``advx.ops.apgd_step_``: the momentum step
and both projections) and every decision is a tensor operation on the device: a run's
iterations read nothing back to the host (between runs, the samples still robust are
selected). P is the published projection for L-inf and L2 (ball, then box, exact in the
data's dtype) and the exact projection onto the L1 ball ∩ box for L1.

L1 follows Croce & Hein (ICCV 2021): step size eps; the step moves the sign of the
gradient on a fraction of its largest coordinates (20 % at first), and at a checkpoint
that fraction becomes the best point's sparsity / 1.5, while the step size returns to
eps where that sparsity fell by 5 % or more (restarting from the best point) and
shrinks by 1.5 elsewhere, never below eps / 10.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _validate, ops
from .._runtime import logits_of
from .base import Attack, AttackResult, check_labels, checked_grad, loss_logits, project_into_, sample_norms

__all__ = ["APGD", "APGDT", "dlr_loss", "targeted_dlr_loss"]

LOSSES = ("ce", "dlr")


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sample, the difference-of-logits ratio to ascend: -(z_y - max_{i != y} z_i) /
    (z_pi1 - z_pi3 + 1e-12), z sorted descending (z_pi1 the largest). Needs >= 3 classes."""
    top, order = logits.sort(dim=1, descending=True)
    z_y = logits.gather(1, labels[:, None])[:, 0]
    best_other = torch.where(order[:, 0] == labels, top[:, 1], top[:, 0])
    return -(z_y - best_other) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per sample, -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12). Needs >= 4 classes."""
    top, _ = logits.sort(dim=1, descending=True)
    z_y = logits.gather(1, labels[:, None])[:, 0]
    z_t = logits.gather(1, targets[:, None])[:, 0]
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def _checkpoints(steps: int) -> list[int]:
    """The iterations after which the step sizes are checked: first after 22 % of the
    steps, the gap then shrinking by 3 % of the steps, never below 6 %."""
    gap, smallest, shrink = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    out, at = [], gap - 1
    while at < steps:
        out.append(at)
        gap = max(gap - shrink, smallest)
        at += gap
    return out


class APGD(Attack):
    """Auto-PGD: ``APGD(model, eps, norm="linf", steps=100, loss="ce", restarts=1, rho=0.75)``.

    ``loss``: "ce" (cross-entropy) or "dlr" (difference of logits ratio, scale-invariant;
    needs >= 3 classes). ``eps`` may be a [B] tensor. Each restart runs on the samples not
    yet fooled; the result holds, per sample, the first adversarial point found (else the
    point of highest loss).
    """

    name = "APGD"

    def __init__(self, model, eps, norm: str = "linf", steps: int = 100, loss: str = "ce", restarts: int = 1,
                 rho: float = 0.75, *, seed=None, bounds=(0.0, 1.0), targeted: bool = False):
        super().__init__(model, targeted=targeted, bounds=bounds)
        if targeted:
            raise ValueError("APGD is untargeted; APGDT is its targeted form")
        self.eps = _validate.budget(eps, "eps")
        self.norm = _validate.norm(norm, _validate.L1_NORMS)
        self.steps = _validate.steps(steps)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.loss = loss
        self.restarts = _validate.steps(restarts)
        if not 0.0 < float(rho) <= 1.0:
            raise ValueError(f"rho must lie in (0, 1], got {rho}")
        self.rho = float(rho)
        self.seed = _validate.seed(seed)
        self.name = f"APGD-{loss.upper()}"

    # -- the per-sample objective -----------------------------------------------------

    def _loss(self, logits, labels, targets):
        logits = loss_logits(logits)
        if self.loss == "dlr":
            if logits.shape[1] < 3:
                raise ValueError(f"loss='dlr' needs at least 3 classes, the model returns {logits.shape[1]}")
            return dlr_loss(logits, labels)
        return F.cross_entropy(logits, labels, reduction="none")

    def _gradient(self, x_adv, labels, targets):
        """(logits, per-sample loss, and checked_grad's gradient and flags)."""
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = logits_of(self.model, x_adv)
            loss = self._loss(logits, labels, targets)
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        return (logits.detach(), loss.detach(), *checked_grad(grad, logits.detach(), loss.detach()))

    # -- one run ------------------------------------------------------------------------

    def _start(self, x, eps_b, col, rng, draw):
        """The random start in the ball ∩ box: uniform in the L-inf ball, on a random L2
        direction at radius eps (then the box), or for L1 a Gaussian point projected onto
        the L1 ball ∩ box (as the L1 reference does). ``rng``: the per-sample generator
        (advx._rng; None: torch's global RNG), ``draw`` the run's number."""
        batch = x.shape[0]
        eps_x = eps_b.to(x.dtype).reshape(col)
        if self.norm == "linf":
            if rng is None:
                t = 2 * torch.rand(x.shape, device=x.device, dtype=x.dtype) - 1
            else:
                t = 2 * rng.uniform(x.shape[1:], draw, dtype=x.dtype) - 1
            start = x + eps_x * t / t.reshape(batch, -1).abs().amax(dim=1).reshape(col)
        else:
            t = torch.randn(x.shape, device=x.device, dtype=x.dtype) if rng is None else \
                rng.normal(x.shape[1:], draw, dtype=x.dtype)
            start = x + (t if self.norm == "l1" else eps_x * t / (sample_norms(t, "l2").reshape(col) + 1e-12))
        return project_into_(start.contiguous(), x, eps_b, self.norm, self.bounds)

    def _direction(self, grad, topk):
        """What apgd_step_ takes as g: the gradient itself (linf: its sign; l2: it is
        normalized), or for L1 the sign of the gradient on its ``topk`` fraction of
        largest-magnitude coordinates per sample (the op scales it to unit L1 norm)."""
        if self.norm != "l1":
            return grad
        flat = grad.reshape(grad.shape[0], -1)
        n = flat.shape[1]
        at = ((1.0 - topk) * n).long().clamp(0, n - 1)
        threshold = flat.abs().sort(dim=1).values.gather(1, at[:, None])
        return (flat.sign() * (flat.abs() >= threshold)).reshape(grad.shape)

    def _single_run(self, x, labels, eps, targets, rng, draw):
        """One APGD run on (x, labels): (best-loss point, ever fooled, first fooled point,
        its iteration (-1: never), zero-gradient and non-finite flags)."""
        batch, dims = x.shape[0], x.dim() - 1
        col = (-1,) + (1,) * dims
        eps_b = _validate.budget_tensor(eps, "eps", x)  # rounded toward zero, as the kernels read it
        x_adv = self._start(x, eps_b, col, rng, draw)
        # step sizes per sample in the math dtype, halved (L1: adapted) at checkpoints
        full_step = (1.0 if self.norm == "l1" else 2.0) * eps_b
        step = full_step.clone()
        logits, loss, grad, nonfinite, zero_grad = self._gradient(x_adv, labels, targets)
        fooled = self._success(logits, labels)
        best_fooled = x_adv.clone()
        x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss.clone()
        loss_steps = torch.zeros((self.steps, batch), device=x.device, dtype=loss.dtype)
        checkpoints = set(_checkpoints(self.steps))
        last_check = 0
        loss_best_last_check = loss_best.clone()
        reduced_last_check = torch.ones(batch, dtype=torch.bool, device=x.device)
        n_features = x[0].numel()
        topk = torch.full((batch,), 0.2, device=x.device)  # L1: the fraction of coordinates moved
        sparsity_last = torch.full((batch,), float(n_features), device=x.device)
        x_prev = x_adv.clone()
        first = torch.where(fooled, 0, -1)
        for i in range(self.steps):
            # the fused iteration: momentum step and both projections; x_prev <- x_adv
            ops.apgd_step_(x_adv, x_prev, self._direction(grad, topk), x, eps_b, step,
                           1.0 if i == 0 else 0.75, self.norm, self.bounds)
            logits, loss, grad, bad, zero = self._gradient(x_adv, labels, targets)
            nonfinite |= bad
            zero_grad |= zero
            now = self._success(logits, labels)
            newly = now & ~fooled
            best_fooled = torch.where(newly.reshape(col), x_adv, best_fooled)
            first = torch.where(newly, i + 1, first)
            fooled |= now
            loss_steps[i] = loss
            better = (loss > loss_best).reshape(col)
            x_best = torch.where(better, x_adv, x_best)
            grad_best = torch.where(better, grad, grad_best)
            loss_best = torch.maximum(loss_best, torch.nan_to_num(loss, nan=-torch.inf))
            if i in checkpoints:
                if self.norm == "l1":
                    # L1 (Croce & Hein, ICCV 2021): the sparsity follows the best point's,
                    # the step resets when that sparsity fell and shrinks otherwise
                    sparsity = (x_best != x).reshape(batch, -1).sum(1).to(topk.dtype)
                    restart = sparsity / sparsity_last < 0.95
                    topk = sparsity / n_features / 1.5
                    step = torch.where(restart, full_step, step / 1.5)
                    step = torch.minimum(torch.maximum(step, full_step / 10), full_step)
                    sparsity_last = sparsity
                else:
                    k = i - last_check + 1  # the gap that led here
                    # the loss rose in at most rho of the last k steps (loss_steps[-1] is 0
                    # until the last step is written, as in the reference implementation)
                    rises = sum((loss_steps[i - j] > loss_steps[i - j - 1]) for j in range(k))
                    oscillating = rises <= k * self.rho
                    stalled = ~reduced_last_check & (loss_best_last_check >= loss_best)
                    restart = oscillating | stalled
                    reduced_last_check = restart
                    loss_best_last_check = loss_best.clone()
                    step = torch.where(restart, step / 2, step)
                h = restart.reshape(col)
                x_adv = torch.where(h, x_best, x_adv)
                grad = torch.where(h, grad_best, grad)
                last_check = i + 1
        return x_best, fooled, best_fooled, first, zero_grad, nonfinite

    def _targets_of(self, clean_logits, labels):
        return [None]

    def _attack(self, images, labels, record_loss, report=True) -> AttackResult:
        eps = self.eps.to(images.device) if isinstance(self.eps, torch.Tensor) else self.eps
        batch = images.shape[0]
        rng = self._random("start")
        with torch.no_grad():
            clean_logits = logits_of(self.model, images)
        check_labels(self._label_span, clean_logits.shape[1])
        adv = images.clone()
        fooled = self._success(clean_logits, labels)
        best_loss_point = images.clone()
        zero_grad = torch.zeros(batch, dtype=torch.bool, device=images.device)
        nonfinite = ~torch.isfinite(clean_logits).all(dim=1)
        first = torch.where(fooled, 0, -1)
        done = 0  # iterations of the runs before this one
        col = (-1,) + (1,) * (images.dim() - 1)
        # each run attacks only the samples not fooled yet (one host read per run, none
        # inside a run's iterations)
        runs = 0  # each (target, restart) run draws its own start: draw number `runs`
        for targets in self._targets_of(clean_logits, labels):
            for _ in range(self.restarts):
                left = (~fooled).nonzero()[:, 0]
                if left.numel() == 0:
                    break
                sub_eps = eps[left] if isinstance(eps, torch.Tensor) and eps.dim() == 1 else eps
                sub_targets = None if targets is None else targets[left]
                x_best, now, first_fooled, at, zg, nf = self._single_run(
                    images[left], labels[left], sub_eps, sub_targets, None if rng is None else rng.subset(left), runs)
                runs += 1
                adv[left] = torch.where(now.reshape(col), first_fooled, adv[left])
                best_loss_point[left] = x_best
                first[left] = torch.where(now, done + at, first[left])
                fooled[left] = now
                zero_grad[left] |= zg
                nonfinite[left] |= nf
                done += self.steps
        # a sample never fooled returns its highest-loss point (inside the budget too)
        adv = torch.where(fooled.reshape(col), adv, best_loss_point)
        if not report:
            return AttackResult(adv=adv, success=None, loss=None, norm=None, first_success=None,
                                zero_grad=zero_grad, nonfinite=nonfinite)
        _, ce, success, bad = self._final_pass(images, adv, labels)
        nonfinite |= bad
        first = torch.where(success, first.clamp_min(0), -1)  # iterations over all runs
        return AttackResult(adv=adv, success=success, loss=ce.to(images.dtype), norm=sample_norms(adv - images, self.norm),
                            first_success=first, zero_grad=zero_grad, nonfinite=nonfinite)


class APGDT(APGD):
    """Targeted APGD with the targeted DLR loss, untargeted in effect: ``labels`` are the
    true labels; for each of the ``n_targets`` highest-scoring wrong classes on the clean
    input, one APGD run toward it (needs >= 4 classes; fewer targets when the model has
    fewer than n_targets + 1 classes). A sample counts as fooled once any run fools it."""

    name = "APGD-T"

    def __init__(self, model, eps, norm: str = "linf", steps: int = 100, n_targets: int = 9, restarts: int = 1,
                 rho: float = 0.75, *, seed=None, bounds=(0.0, 1.0)):
        super().__init__(model, eps, norm=norm, steps=steps, loss="dlr", restarts=restarts, rho=rho, seed=seed,
                         bounds=bounds)
        self.n_targets = _validate.steps(n_targets)
        self.name = "APGD-T"

    def _loss(self, logits, labels, targets):  # >= 4 classes: checked by _targets_of, before any run
        return targeted_dlr_loss(loss_logits(logits), labels, targets)

    def _targets_of(self, clean_logits, labels):
        if clean_logits.shape[1] < 4:
            raise ValueError(f"APGD-T's targeted DLR loss needs at least 4 classes, the model returns "
                             f"{clean_logits.shape[1]}")
        order = clean_logits.argsort(dim=1, descending=True)
        count = min(self.n_targets, clean_logits.shape[1] - 1)
        # the k-th highest-scoring class other than the label (as the reference: sorted
        # clean logits, position k + 1 from the top, which skips a top-1 correct label)
        return [order[:, k] for k in range(1, count + 1)]
