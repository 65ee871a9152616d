"""APGD and APGD-T (Croce & Hein, ICML 2020): step-size-free PGD with momentum, the attacks
at the head of AutoAttack's standard evaluation.

Per sample: a random start in the ball; step size 2*eps; the momentum step
``z = P(x + eta * step(g))``, ``x_new = P(x + a (z - x) + (1 - a)(x - x_prev))`` with
a = 1 on the first iteration and 0.75 after; checkpoints after 22 % of the iterations,
the gap shrinking by 3 % of them down to 6 %. At a checkpoint a sample halves its step
and restarts from its best point if its loss increased in at most ``rho`` of the steps
since the last checkpoint, or if its step was not halved last time and its best loss has
not improved. Each iteration is one fused op (``advx.ops.apgd_step_``: the momentum step
and both projections) and every decision is a per-sample tensor operation. The runs are
work items of advx.attacks.stream: a step reads back only which rows are new, at their
first iteration, at a checkpoint or finished. P is the published projection for L-inf and L2 (ball, then box, exact in the
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
from .stream import run_items
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

    def _targets_of(self, clean_logits, labels):
        return [None]

    def _attack(self, images, labels, record_loss, report=True) -> AttackResult:
        eps = self.eps.to(images.device) if isinstance(self.eps, torch.Tensor) else self.eps
        with torch.no_grad():
            clean_logits = logits_of(self.model, images)
        check_labels(self._label_span, clean_logits.shape[1])
        runs = _Runs(self, images, labels, eps, clean_logits)
        # the queue run-major: every sample's first run, then the second ... (targets
        # outer, restarts inner, as the runs were once done one after the other); a run
        # starts only while its sample is not fooled, and stops as soon as it is
        order = torch.arange(runs.n_items, device=images.device)
        run_items(runs, order, self._batch_size or images.shape[0])
        adv, first = runs.result, runs.first
        if not report:
            return AttackResult(adv=adv, success=None, loss=None, norm=None, first_success=None,
                                zero_grad=runs.zero_grad, nonfinite=runs.nonfinite)
        _, ce, success, bad = self._final_pass(images, adv, labels)
        nonfinite = runs.nonfinite | bad
        first = torch.where(success, first.clamp_min(0), -1)  # iterations over all runs
        return AttackResult(adv=adv, success=success, loss=ce.to(images.dtype), norm=sample_norms(adv - images, self.norm),
                            first_success=first, zero_grad=runs.zero_grad, nonfinite=nonfinite)


class _Runs:
    """APGD's runs as work items of advx.attacks.stream: item ``r * B + b`` is run ``r``
    (target ``r // restarts``, restart ``r % restarts``) of sample ``b``, with all of its
    state per row: iterate, momentum point, step size, iteration count, the loss history
    its step-size checkpoints read, its best point. Each row follows exactly the
    iteration of one APGD run, whatever else shares the batch."""

    def __init__(self, atk: APGD, images, labels, eps, clean_logits):
        self.atk, self.images, self.labels = atk, images, labels
        batch = images.shape[0]
        self.batch, self.col = batch, (-1,) + (1,) * (images.dim() - 1)
        self.eps_b = _validate.budget_tensor(eps, "eps", images)  # rounded toward zero, as the kernels read it
        targets = atk._targets_of(clean_logits, labels)
        self.targets = torch.stack([labels if t is None else t for t in targets])  # [targets, B]
        self.n_runs = len(targets) * atk.restarts
        self.n_items = self.n_runs * batch
        self.rng = atk._random("start")
        self.early_exit = atk._early_exit
        steps = atk.steps
        self.is_check = torch.zeros(steps, dtype=torch.bool, device=images.device)
        self.is_check[_checkpoints(steps)] = True
        # per sample: the result
        self.fooled = atk._success(clean_logits, labels)
        self.adv = images.clone()
        self.best_loss_point = images.clone()
        self.best_from = torch.full((batch,), -1, dtype=torch.int64, device=images.device)
        self.first = torch.where(self.fooled, 0, -1)
        self.zero_grad = torch.zeros(batch, dtype=torch.bool, device=images.device)
        self.nonfinite = ~torch.isfinite(clean_logits).all(dim=1)
        self.busy = torch.zeros(batch, dtype=torch.bool, device=images.device)

    def admissible(self, items):
        sample = items % self.batch
        live = ~self.fooled[sample]
        # a run waits while its sample's previous one is in the batch; of several waiting
        # runs of a sample, the earliest in the queue goes first
        ready = live & ~self.busy[sample]
        pos = torch.arange(items.shape[0], device=items.device)
        first = torch.full((self.batch,), items.shape[0], dtype=torch.int64, device=items.device)
        first.scatter_reduce_(0, sample[ready], pos[ready], reduce="amin")
        return ready & (first[sample] == pos), ~live

    def _start(self, sample, run, eps_b):
        """The random starts of the items (sample, run), each run its own draw."""
        x = self.images[sample]
        if self.rng is None:
            return self.atk._start(x, eps_b, self.col, None, 0)
        out = torch.empty_like(x)
        for r in run.unique().tolist():  # a handful of distinct runs among newcomers
            rows = (run == r).nonzero()[:, 0]
            out[rows] = self.atk._start(x[rows], eps_b[rows], self.col, self.rng.subset(sample[rows]), r)
        return out

    def admit(self, items):
        atk = self.atk
        sample, run = items % self.batch, items // self.batch
        self.busy[sample] = True
        eps_b = self.eps_b[sample]
        x = self._start(sample, run, eps_b)
        n, device = items.shape[0], items.device
        full_step = (1.0 if atk.norm == "l1" else 2.0) * eps_b
        zeros = torch.zeros(n, device=device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
        return {
            "item": items, "sample": sample, "run": run, "target": self.targets[run // atk.restarts, sample],
            "eps": eps_b, "full_step": full_step, "step": full_step.clone(),
            "x": x, "x_prev": x.clone(), "grad": torch.zeros_like(x),
            "i": torch.full((n,), -1, dtype=torch.int64, device=device),  # -1: the start, not yet evaluated
            "last_check": torch.zeros(n, dtype=torch.int64, device=device),
            "loss_prev": zeros.clone(), "rises": torch.zeros(n, dtype=torch.int64, device=device),
            "x_best": x.clone(), "grad_best": torch.zeros_like(x), "loss_best": zeros.clone(),
            "loss_best_last_check": zeros.clone(), "reduced_last_check": torch.ones(n, dtype=torch.bool, device=device),
            "topk": torch.full((n,), 0.2, device=device),
            "sparsity_last": torch.full((n,), float(x[0].numel()), device=device),
            "fooled": torch.zeros(n, dtype=torch.bool, device=device), "fooled_point": x.clone(),
            "at": torch.full((n,), -1, dtype=torch.int64, device=device),
            "zero_grad": torch.zeros(n, dtype=torch.bool, device=device),
            "nonfinite": torch.zeros(n, dtype=torch.bool, device=device),
        }

    def step(self, st):
        atk, col = self.atk, self.col
        i, x, x_prev = st["i"], st["x"], st["x_prev"]
        new = i < 0
        starts = new.nonzero()[:, 0]
        if starts.numel() < i.shape[0]:
            # the fused iteration on every row already evaluated (alpha 1 at a run's first
            # step: no momentum yet); the starts pass unchanged
            kept = x[starts], x_prev[starts]
            firsts = (i == 0).nonzero()[:, 0]
            if firsts.numel():
                xf, pf = x[firsts], x_prev[firsts]
            ops.apgd_step_(x, x_prev, atk._direction(st["grad"], st["topk"]), self.images[st["sample"]],
                           st["eps"], st["step"], 0.75, atk.norm, atk.bounds)
            if firsts.numel():
                ops.apgd_step_(xf, pf, atk._direction(st["grad"][firsts], st["topk"][firsts]),
                               self.images[st["sample"][firsts]], st["eps"][firsts], st["step"][firsts], 1.0,
                               atk.norm, atk.bounds)
                x[firsts], x_prev[firsts] = xf, pf
            x[starts], x_prev[starts] = kept
        labels = self.labels[st["sample"]]
        logits, loss, grad, bad, zero = atk._gradient(x, labels, st["target"])
        st["grad"] = grad
        st["nonfinite"] |= bad
        st["zero_grad"] |= zero
        now = atk._success(logits, labels)
        newly = now & ~st["fooled"]
        st["fooled_point"] = torch.where(newly.reshape(col), x, st["fooled_point"])
        st["at"] = torch.where(newly, st["i"] + 1, st["at"])
        st["fooled"] |= now
        # the start: the best point so far and nothing more
        st["x_best"] = torch.where(new.reshape(col), x, st["x_best"])
        st["grad_best"] = torch.where(new.reshape(col), grad, st["grad_best"])
        st["loss_best"] = torch.where(new, loss, st["loss_best"])
        st["loss_best_last_check"] = torch.where(new, loss, st["loss_best_last_check"])
        stepped = ~new
        # the loss rose since the previous iterate (before a run's first iterate: above 0,
        # as the reference's zero-initialized history reads)
        st["rises"] += (stepped & (loss > st["loss_prev"])).long()
        st["loss_prev"] = torch.where(stepped, loss, st["loss_prev"])
        better = stepped & (loss > st["loss_best"])
        st["x_best"] = torch.where(better.reshape(col), x, st["x_best"])
        st["grad_best"] = torch.where(better.reshape(col), grad, st["grad_best"])
        st["loss_best"] = torch.where(stepped, torch.maximum(st["loss_best"], torch.nan_to_num(loss, nan=-torch.inf)),
                                      st["loss_best"])
        check = stepped & self.is_check[i.clamp(0, atk.steps - 1)]
        if bool(check.any()):
            self._checkpoint(st, check, i)
        st["i"] = i + 1
        out_of_steps = st["i"] >= atk.steps
        fooled_sample = self.fooled[st["sample"]]  # another run of the sample fooled it
        if self.early_exit:
            return st["fooled"] | out_of_steps | fooled_sample
        return out_of_steps | fooled_sample

    def _checkpoint(self, st, check, i):
        atk, col = self.atk, self.col
        if atk.norm == "l1":
            # L1 (Croce & Hein, ICCV 2021): the sparsity follows the best point's, the
            # step resets when that sparsity fell and shrinks otherwise
            x0 = self.images[st["sample"]]
            sparsity = (st["x_best"] != x0).reshape(x0.shape[0], -1).sum(1).to(st["topk"].dtype)
            restart = check & (sparsity / st["sparsity_last"] < 0.95)
            st["topk"] = torch.where(check, sparsity / x0[0].numel() / 1.5, st["topk"])
            step = torch.where(restart, st["full_step"], st["step"] / 1.5)
            step = torch.minimum(torch.maximum(step, st["full_step"] / 10), st["full_step"])
            st["step"] = torch.where(check, step, st["step"])
            st["sparsity_last"] = torch.where(check, sparsity, st["sparsity_last"])
        else:
            k = i - st["last_check"] + 1  # the iterates since the last checkpoint
            oscillating = st["rises"] <= k * atk.rho
            stalled = ~st["reduced_last_check"] & (st["loss_best_last_check"] >= st["loss_best"])
            restart = check & (oscillating | stalled)
            st["reduced_last_check"] = torch.where(check, restart, st["reduced_last_check"])
            st["loss_best_last_check"] = torch.where(check, st["loss_best"], st["loss_best_last_check"])
            st["step"] = torch.where(restart, st["step"] / 2, st["step"])
            st["rises"] = torch.where(check, 0, st["rises"])
        h = restart.reshape(col)
        st["x"] = torch.where(h, st["x_best"], st["x"])
        st["grad"] = torch.where(h, st["grad_best"], st["grad"])
        st["last_check"] = torch.where(check, i + 1, st["last_check"])

    def retire(self, st):
        sample, run = st["sample"], st["run"]
        self.busy[sample] = False
        # the first of a sample's runs to fool it gives its adversarial point (the
        # earliest run when two fool it in the same step); a run stopped because another
        # one fooled the sample gives nothing
        rows = _one_per_sample(st["fooled"] & ~self.fooled[sample], sample, run, self.n_runs)
        s = sample[rows]
        won = rows.numel()
        self.adv[s] = st["fooled_point"][rows]
        self.first[s] = run[rows] * self.atk.steps + st["at"][rows]
        self.fooled[s] = True
        # a sample never fooled returns the best-loss point of its last run
        rows = _one_per_sample(~st["fooled"] & (run > self.best_from[sample]), sample, -run, self.n_runs)
        s = sample[rows]
        self.best_loss_point[s] = st["x_best"][rows]
        self.best_from[s] = run[rows]
        self.atk._finished(won, (~self.fooled[sample] & (run == self.n_runs - 1)).sum())
        for mine, theirs in ((self.zero_grad, st["zero_grad"]), (self.nonfinite, st["nonfinite"])):
            hits = torch.zeros(mine.shape[0], dtype=torch.int64, device=mine.device)
            mine |= hits.index_add_(0, sample, theirs.long()) > 0

    @property
    def result(self):
        return torch.where(self.fooled.reshape(self.col), self.adv, self.best_loss_point)


def _one_per_sample(mask, sample, key, n_keys):
    """The rows where ``mask`` holds, one per sample: the one of smallest ``key``."""
    rows = mask.nonzero()[:, 0]
    order = torch.argsort(sample[rows] * (2 * n_keys + 1) + key[rows], stable=True)
    rows, s = rows[order], sample[rows[order]]
    first = torch.ones_like(s, dtype=torch.bool)
    first[1:] = s[1:] != s[:-1]
    return rows[first]


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
