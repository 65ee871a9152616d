"""Robustness evaluation over whole data sets: clean and robust accuracy for several
attacks and budgets, and the random-sphere check (how many labels random
perturbations of a given size change, to set beside the adversarial radius)."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from numbers import Integral, Real

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from . import _validate
from ._runtime import count_passes, default_device, eval_mode, generator, logits_of
from .attacks import Attack
from .attacks.base import loss_logits, sample_norms

__all__ = ["RobustnessReport", "EvaluationWarning", "GradientMaskingWarning", "robust_accuracy", "random_sphere", "Evaluation", "evaluate",
           "make_attack", "EVAL_ATTACKS"]


class EvaluationWarning(UserWarning):
    """A property of the model or the run that changes what the numbers mean."""


class GradientMaskingWarning(EvaluationWarning):
    """Some attacked samples had a zero or non-finite input gradient: the attack had
    nothing to follow there, and their robust accuracy is no evidence of robustness."""


@dataclass
class RobustnessReport:
    """Clean accuracy and one row per (attack, eps): ``name``, ``norm``, ``eps``,
    ``robust_accuracy`` (fraction of *all* samples still classified correctly
    under the attack; a sample misclassified clean counts as not robust), and the
    gradient-masking counts over the attacked samples: ``zero_grad`` (input gradient
    exactly zero at some step) and ``nonfinite`` (NaN/inf logits, loss or gradient)."""

    clean_accuracy: float
    rows: list = field(default_factory=list)
    n_samples: int = 0
    worst_case: list = field(default_factory=list)  # per (norm, eps) shared by >= 2 attacks

    def to_dict(self) -> dict:
        return {"n_samples": self.n_samples, "clean_accuracy": self.clean_accuracy,
                "attacks": [dict(r) for r in self.rows], "worst_case": [dict(r) for r in self.worst_case]}

    def __str__(self) -> str:
        header = ("attack", "norm", "eps", "robust acc")
        lines = [("clean", "-", "-", f"{self.clean_accuracy:.4f}")]
        for r in self.rows:
            eps = "-" if r["eps"] is None else f"{r['eps']:.4g}"
            lines.append((str(r["name"]), str(r["norm"]), eps, f"{r['robust_accuracy']:.4f}"))
        for r in self.worst_case:  # a sample robust only if no attack at that budget fooled it
            lines.append(("worst case", str(r["norm"]), f"{r['eps']:.4g}", f"{r['robust_accuracy']:.4f}"))
        masked = any(r.get("zero_grad") or r.get("nonfinite") for r in self.rows)
        if masked:  # the counts only when there is something to see
            header += ("zero grad", "non-finite")
            lines[0] += ("-", "-")
            for i, r in enumerate(self.rows, start=1):
                lines[i] += (str(r.get("zero_grad", 0)), str(r.get("nonfinite", 0)))
            for i in range(len(self.rows) + 1, len(lines)):
                lines[i] += ("-", "-")
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
        out += [fmt.format(*line) for line in lines]
        return "\n".join(out) + f"\n({self.n_samples} samples)"


def _loader(data, batch_size: int):
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        images, labels = data
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"data: images has {images.shape[0]} samples but labels has {labels.shape[0]}")
        data = TensorDataset(images, labels)
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    raise TypeError("data must be a DataLoader, a Dataset or an (images, labels) pair of tensors, "
                    f"got {type(data).__name__}")


def _named(attacks) -> list:
    items = list(attacks.items()) if isinstance(attacks, dict) else [(None, a) for a in attacks]
    out = []
    for name, atk in items:
        if not isinstance(atk, Attack):
            raise TypeError(f"attacks must hold advx.attacks attacks, got {type(atk).__name__}")
        if atk.targeted:
            raise ValueError(f"attack {name or atk.name} is targeted; robust accuracy needs untargeted attacks")
        out.append((name or atk.name, atk))
    return out


def _budget_list(budgets) -> list | None:
    if budgets is None:
        return None
    if isinstance(budgets, torch.Tensor):
        if budgets.dim() > 1:
            raise ValueError(f"budgets must be a sequence of positive floats, got a tensor of shape "
                             f"{tuple(budgets.shape)}")
        budgets = budgets.reshape(-1).tolist()
    elif isinstance(budgets, Real):
        budgets = [budgets]
    values = [_validate.positive(b, "budgets") for b in budgets]
    if not values:
        raise ValueError("budgets must hold at least one budget")
    return sorted(set(values))


def _budgets(atk: Attack, name: str, budgets: list | None) -> list:
    """The budgets an attack runs at: [None] (no budget), ``budgets`` when given, else its
    own eps. A per-sample eps tensor means one budget per sample of a batch in an
    attack; over a data set that has no meaning, so it is refused, pointing at budgets=."""
    if atk.eps is None:
        return [None]
    if budgets is not None:
        return budgets
    if isinstance(atk.eps, torch.Tensor):
        if atk.eps.numel() != 1:
            raise ValueError(
                f"attack {name} has a per-sample eps tensor of {atk.eps.numel()} values (in an attack a tensor is "
                f"one budget per sample of its batch); to evaluate several budgets pass them as "
                f"robust_accuracy(..., budgets=[...])")
        return [float(atk.eps)]
    return [atk.eps]


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


class _NoBar:
    def update(self, n):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


def _progress_bar(total, progress: bool):
    if not progress:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a demo/test extra, not a core dependency
        return _NoBar()
    return tqdm(total=total, unit="img", desc="robust_accuracy")


def _length(loader):
    """The number of samples of the loader's dataset; None where it has no length."""
    try:
        return len(loader.dataset)
    except (TypeError, AttributeError):
        return None


def _batches(loader, device, progress: bool):
    """(images, labels, bar) per batch, on ``device``; the bar advances after each batch."""
    bar = _progress_bar(_length(loader), progress)
    try:
        for batch in loader:
            images, labels = batch[0].to(device), batch[1].to(device).long()
            yield images, labels, bar
            bar.update(int(labels.numel()))
    finally:
        bar.close()


def robust_accuracy(model, data, attacks, *, budgets=None, batch_size: int = 256, device=None,
                    progress: bool = True) -> RobustnessReport:
    """Clean accuracy of ``model`` on ``data`` and its accuracy under each attack.

    ``data``: a DataLoader (its own batches), a Dataset or an ``(images, labels)``
    pair. ``attacks``: a list of attacks, or a dict name -> attack, each at its own
    ``eps``. ``budgets`` (a list of eps values) evaluates every attack that has a budget
    at each of them instead, all in one attack call per batch (the batch is tiled, one
    budget per copy), one row each. Only the
    samples classified correctly are attacked. Where two or more attacks share a budget
    (norm and eps), ``worst_case`` gets a row: the samples no attack at that budget fooled.
    """
    batch_size = _check_batch_size(batch_size)
    named = _named(attacks)
    loader = _loader(data, batch_size)
    device = torch.device(device) if device is not None else default_device(model)
    wanted = _budget_list(budgets)
    budgets = [_budgets(atk, name, wanted) for name, atk in named]
    robust = [[0] * len(b) for b in budgets]
    masking = [[[0, 0] for _ in b] for b in budgets]  # per row: zero_grad, nonfinite
    keys = [[(atk.norm, None if eps is None else float(eps)) for eps in b] for (_, atk), b in zip(named, budgets)]
    shared = {k for k in {k for ks in keys for k in ks} if k[1] is not None and
              sum(k in ks for ks in keys) >= 2}
    worst = {k: 0 for k in shared}
    n_seen = n_clean = 0
    with eval_mode(model):
        for images, labels, bar in _batches(loader, device, progress):
            with torch.no_grad():
                correct = logits_of(model, images).argmax(dim=1) == labels
            n_seen += labels.shape[0]
            n_clean += int(correct.sum())
            images, labels = images[correct], labels[correct]
            if labels.numel():
                alive = {k: torch.ones_like(labels, dtype=torch.bool) for k in shared}
                for i, (_, atk) in enumerate(named):
                    counts, still_masks = _robust_counts(model, atk, budgets[i], images, labels)
                    for j, (still, zero, bad) in enumerate(counts):
                        robust[i][j] += still
                        masking[i][j][0] += zero
                        masking[i][j][1] += bad
                        if keys[i][j] in alive:
                            alive[keys[i][j]] &= still_masks[j]
                if shared:
                    for k, n in zip(alive, torch.stack(list(alive.values())).sum(dim=1).tolist()):
                        worst[k] += n
            bar.set_postfix(clean=f"{n_clean / n_seen:.3f}")
    if n_seen == 0:
        raise ValueError("data is empty")
    rows = []
    for (name, atk), eps_list, counts, masks in zip(named, budgets, robust, masking):
        for eps, count, (zero, bad) in zip(eps_list, counts, masks):
            rows.append({"name": name, "norm": atk.norm, "eps": None if eps is None else float(eps),
                         "robust_accuracy": count / n_seen, "zero_grad": zero, "nonfinite": bad})
    _warn_masking(rows, n_clean)
    worst_rows = [{"norm": k[0], "eps": k[1], "robust_accuracy": worst[k] / n_seen} for k in sorted(worst)]
    return RobustnessReport(clean_accuracy=n_clean / n_seen, rows=rows, n_samples=n_seen, worst_case=worst_rows)


def _warn_masking(rows: list, attacked: int) -> None:
    """One warning per call when any attacked sample had a zero or non-finite gradient."""
    hit = [r for r in rows if r["zero_grad"] or r["nonfinite"]]
    if not hit:
        return
    parts = []
    for r in hit:
        eps = "" if r["eps"] is None else f" eps={r['eps']:.4g}"
        parts.append(f"{r['name']}{eps}: {r['zero_grad']} zero gradient, {r['nonfinite']} non-finite "
                     f"logits/loss/gradient")
    warnings.warn(f"robust_accuracy: of {attacked} attacked samples, " + "; ".join(parts)
                  + ". Their robust accuracy is no evidence of robustness (gradient masking).",
                  GradientMaskingWarning, stacklevel=3)


def _robust_counts(model, atk: Attack, eps_list: list, images, labels) -> list:
    """Per budget: (how many of (images, labels) stay correct under ``atk``, how many had a
    zero input gradient, how many non-finite logits/loss/gradient), with one host read;
    and the per-sample masks of who stayed correct, [budgets, n]."""
    copies = len(eps_list)
    if eps_list != [None]:
        atk = atk.with_eps(eps_list[0])
    if copies > 1:
        n = labels.shape[0]
        eps = torch.tensor(eps_list, device=images.device).repeat_interleave(n)
        atk = atk.with_eps(eps)
        images = images.repeat(copies, *([1] * (images.dim() - 1)))
        labels = labels.repeat(copies)
    # the attack without its final report pass (its flags still cover every step):
    # robust accuracy and the final non-finite check use the evaluated model's pass below
    res = atk._run(images, labels, record_loss=False, report=False)
    with torch.no_grad():
        logits = logits_of(model, res.adv)
        still = logits.argmax(dim=1) == labels
        ce = F.cross_entropy(loss_logits(logits), labels, reduction="none")
        final_bad = ~(torch.isfinite(logits).all(dim=1) & torch.isfinite(ce))
    flags = [torch.zeros_like(still) if f is None else f for f in (res.zero_grad, res.nonfinite)]
    flags[1] = flags[1] | final_bad
    counts = torch.stack([still, *flags]).reshape(3, copies, -1).sum(dim=2)
    return [tuple(c) for c in counts.t().tolist()], still.reshape(copies, -1)


def _check_radius(radius, x: torch.Tensor) -> torch.Tensor:
    if isinstance(radius, torch.Tensor):
        if radius.dim() > 1 or (radius.dim() == 1 and radius.shape[0] != x.shape[0]):
            raise ValueError(f"radius must be a float or a [{x.shape[0]}] tensor, got shape {tuple(radius.shape)}")
        r = radius.detach().to(device=x.device, dtype=x.dtype).expand(x.shape[0])
    elif isinstance(radius, bool) or not isinstance(radius, Real):
        raise TypeError(f"radius must be a float or a tensor, got {type(radius).__name__}")
    else:
        r = torch.full((x.shape[0],), float(radius), device=x.device, dtype=x.dtype)
    if r.numel() and not bool(((r >= 0) & torch.isfinite(r)).all()):
        raise ValueError(f"radius must be non-negative and finite, got {r.tolist()[:4]}...")
    return r


@torch.no_grad()
def random_sphere(model, x: torch.Tensor, radius, *, n: int = 1000, labels=None,
                  batch_size: int = 1024, clamp: bool = True, seed=None) -> torch.Tensor:
    """Fraction of ``n`` random points on the L2 sphere of ``radius`` around each
    sample of ``x`` (uniform directions; clamped to [0, 1] when ``clamp``) whose
    predicted label differs from ``labels`` (default: the prediction on ``x``).

    ``radius`` is a float or a ``[B]`` tensor (e.g. twice each sample's adversarial
    distance). Returns a ``[B]`` float tensor in [0, 1].
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating point torch.Tensor")
    if x.dim() < 2:
        raise ValueError(f"x must be batched [B, ...], got shape {tuple(x.shape)}")
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    batch_size = _check_batch_size(batch_size)
    r = _check_radius(radius, x)
    with eval_mode(model):
        if labels is None:
            labels = logits_of(model, x).argmax(dim=1) if x.shape[0] else torch.zeros(0, dtype=torch.int64, device=x.device)
        elif not isinstance(labels, torch.Tensor) or labels.shape != x.shape[:1]:
            raise ValueError(f"labels must be a [{x.shape[0]}] tensor")
        labels = labels.to(x.device).long()
        gen = generator(seed, x.device)
        changed = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        total = x.shape[0] * n
        for start in range(0, total, batch_size):
            sample = torch.arange(start, min(start + batch_size, total), device=x.device) // n
            direction = torch.randn((sample.shape[0], *x.shape[1:]), generator=gen, device=x.device, dtype=x.dtype)
            norms = torch.linalg.vector_norm(direction.reshape(sample.shape[0], -1), dim=1).clamp_min(1e-30)
            scale = (r[sample] / norms).reshape(-1, *([1] * (x.dim() - 1)))
            points = x[sample] + scale * direction
            if clamp:
                points.clamp_(0.0, 1.0)
            flipped = logits_of(model, points).argmax(dim=1) != labels[sample]
            changed.index_add_(0, sample, flipped.double())
    return (changed / n).to(torch.float32)



# -- the worst-case evaluation -------------------------------------------------------------

EVAL_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "square", "pgd", "fgsm")
DEFAULT_EVAL_ATTACKS = ("apgd-ce", "apgd-t", "square")
L1_EVAL_ATTACKS = ("apgd-ce", "apgd-t")  # what the default becomes for norm="l1"


@dataclass
class Evaluation:
    """The worst case over a cascade of attacks, per sample, in dataset order.

    ``clean`` [N] bool: classified correctly. ``robust`` [N] bool: correct and not fooled
    by any attack. ``fooled_by`` [N] int: index into ``attacks`` of the attack that fooled
    the sample first (-1: never fooled, or not clean). ``distance`` [N] float: the size of
    the perturbation that fooled it, in ``norm`` (NaN where none). ``after_attack``: the
    robust accuracy after each attack of the cascade, in order. ``zero_grad`` /
    ``nonfinite`` count attacked samples with a masked gradient (see AttackResult);
    ``warnings`` are the one-line checks a reader of the numbers must see.
    """

    attacks: list
    norm: str
    eps: float
    clean: torch.Tensor
    robust: torch.Tensor
    fooled_by: torch.Tensor
    distance: torch.Tensor
    after_attack: list
    zero_grad: int = 0
    nonfinite: int = 0
    warnings: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    # counts over N in Python: 0.95, not float32's 0.949999988
    @property
    def clean_accuracy(self) -> float:
        return int(self.clean.sum()) / self.clean.numel() if self.clean.numel() else float("nan")

    @property
    def robust_accuracy(self) -> float:
        return int(self.robust.sum()) / self.robust.numel() if self.robust.numel() else float("nan")

    def to_dict(self) -> dict:
        return {
            "n_samples": int(self.clean.numel()), "norm": self.norm, "eps": self.eps, "attacks": list(self.attacks),
            "clean_accuracy": self.clean_accuracy, "robust_accuracy": self.robust_accuracy,
            "after_attack": [{"attack": a, "robust_accuracy": r} for a, r in zip(self.attacks, self.after_attack)],
            "zero_grad": self.zero_grad, "nonfinite": self.nonfinite, "warnings": list(self.warnings),
            "stats": dict(self.stats),
            "per_sample": [{"index": i, "clean": c, "robust": r, "fooled_by": f,
                            "distance": None if d != d else float(f"{d:.7g}")}  # float32's digits, not its noise
                           for i, (c, r, f, d) in enumerate(zip(self.clean.tolist(), self.robust.tolist(),
                                                                self.fooled_by.tolist(), self.distance.tolist()))],
        }

    def __str__(self) -> str:
        lines = [f"clean accuracy   {self.clean_accuracy:.4f}"]
        for a, r in zip(self.attacks, self.after_attack):
            lines.append(f"after {a:<10} {r:.4f}")
        lines.append(f"robust accuracy  {self.robust_accuracy:.4f}  (worst case over {len(self.attacks)} "
                     f"attack(s), {self.norm} eps={self.eps:.4g})")
        lines += [f"warning: {w}" for w in self.warnings]
        work = ""
        if self.stats:
            work = (f"\nwork: {self.stats['forward_backward']} forward-backward and {self.stats['forward']} forward "
                    f"sample-passes, {self.stats['seconds']:.1f} s")
        return "\n".join(lines) + f"\n({self.clean.numel()} samples)" + work


def make_attack(name: str, model, eps: float, norm: str = "linf", *, seed=0, apgd_steps: int = 100,
                queries: int = 5000, pgd_steps: int = 50, alpha=None) -> Attack:
    """The attack of the cascade called ``name`` (one of EVAL_ATTACKS) at (eps, norm): the
    standard settings by default (APGD 100 steps, Square 5000 queries, PGD 50 steps)."""
    from .attacks import APGD, APGDT, FGSM, PGD, Square

    makers = {
        "apgd-ce": lambda: APGD(model, eps, norm, steps=apgd_steps, loss="ce", seed=seed),
        "apgd-dlr": lambda: APGD(model, eps, norm, steps=apgd_steps, loss="dlr", seed=seed),
        "apgd-t": lambda: APGDT(model, eps, norm, steps=apgd_steps, seed=seed),
        "square": lambda: Square(model, eps, norm, queries=queries, seed=seed),
        "pgd": lambda: PGD(model, eps, alpha=alpha, steps=pgd_steps, norm=norm, seed=seed),
        "fgsm": lambda: FGSM(model, eps, norm=norm),
    }
    if name not in makers:
        raise ValueError(f"attacks must hold attack objects or names from {EVAL_ATTACKS}, got {name!r}")
    return makers[name]()


def _eval_attack(spec, model, eps: float, norm: str, seed) -> tuple[str, Attack]:
    """A named attack of the cascade at (eps, norm), or an attack object as given."""
    if isinstance(spec, Attack):
        return spec.name, spec
    return spec, make_attack(spec, model, eps, norm, seed=seed)


def _model_checks(model, images: torch.Tensor, logits: torch.Tensor) -> list:
    """AutoAttack users' checks on one batch: randomness, probabilities instead of logits."""
    found = []
    with torch.no_grad():
        again = logits_of(model, images)
    if not torch.equal(torch.nan_to_num(again), torch.nan_to_num(logits)):
        found.append("the model's outputs change between two identical forward passes (randomness: "
                     "dropout in train mode, stochastic layers); the attack numbers do not mean what they seem")
    rows = logits.float()
    if logits.shape[1] > 1 and bool(((rows >= 0) & (rows <= 1)).all()) and \
            bool(torch.allclose(rows.sum(dim=1), torch.ones_like(rows[:, 0]), atol=1e-4)):
        found.append("the model's outputs look like probabilities (rows in [0, 1] summing to 1): "
                     "pass logits, or the losses saturate and gradients vanish")
    return found


def _attack_batch(model, named, x, y, logits, positions, *, batch_size=None, early_exit=True, seconds=None,
                  bar=None):
    """The cascade on one chunk: (clean, robust, fooled_by, distance, zero-gradient and
    non-finite counts), each attack on the samples still robust, continuously batched
    with a working batch of ``batch_size``. ``seconds``: per attack, time is added."""
    ok = (logits.argmax(dim=1) == y) & torch.isfinite(logits).all(dim=1)
    still = ok.clone()
    by = torch.full_like(y, -1)
    dist = torch.full((y.shape[0],), float("nan"), device=y.device, dtype=torch.float64)
    zero = bad = 0
    moved = [0]  # the bar's advance in this chunk: a sample is done once fooled or past the last attack

    def advance(n):
        n = min(n, y.shape[0] - moved[0])  # an attack's own success check and evaluate's may disagree
        if bar is not None and n > 0:
            bar.update(n)
            moved[0] += n

    advance(int((~ok).sum()) if bar is not None else 0)
    for j, (name, atk) in enumerate(named):
        idx = still.nonzero()[:, 0]
        if idx.numel() == 0:
            break
        began = _clock(x.device)
        last = j == len(named) - 1
        atk._progress = None if bar is None else (lambda fooled, survived: advance(fooled + (survived if last else 0)))
        try:
            res = atk._run(x[idx], y[idx], record_loss=False, report=False, indices=positions[idx],
                           batch_size=batch_size, early_exit=early_exit)
        finally:
            atk._progress = None
        with torch.no_grad():
            out = logits_of(model, res.adv)
        fooled = (out.argmax(dim=1) != y[idx]) & torch.isfinite(out).all(dim=1)
        hit = idx[fooled]
        by[hit] = j
        dist[hit] = sample_norms(res.adv.double() - x[idx].double(), atk.norm)[fooled]
        still[hit] = False
        flags = torch.stack([res.zero_grad if res.zero_grad is not None else torch.zeros_like(fooled),
                             res.nonfinite if res.nonfinite is not None else torch.zeros_like(fooled)])
        z, b = flags.sum(dim=1).tolist()
        zero, bad = zero + z, bad + b
        if seconds is not None:
            seconds[name] = seconds.get(name, 0.0) + _clock(x.device) - began
    advance(y.shape[0] - moved[0])  # attacks that do not report (FGSM, optimizer PGD) and early ends
    return ok, still, by, dist, zero, bad


def _clock(device) -> float:
    """Wall time in seconds, after the device's queued work (so a GPU attack's time is its own)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _chunks(loader, device, size: int, first_index: int, done: int):
    """(images, labels, dataset indices) of at least ``size`` samples at a time (the
    loader's batches joined; the last chunk may be smaller), skipping the samples before
    dataset index ``done`` (finished before an interruption), and the dataset index after
    the chunk. The first loader batch is also yielded alone, before anything else, as
    (images, labels, None, None): the model checks and the checkpoint's fingerprint."""
    xs, ys, have, offset, first = [], [], 0, first_index, True
    for x, y, _ in _batches(loader, device, False):
        if first:
            yield x, y, None, None
            first = False
        start, offset = offset, offset + y.shape[0]
        if offset <= done:
            continue
        skip = max(done - start, 0)
        xs.append(x[skip:])
        ys.append(y[skip:])
        have += y.shape[0] - skip
        if have >= size:
            yield torch.cat(xs), torch.cat(ys), torch.arange(offset - have, offset, device=device), offset
            xs, ys, have = [], [], 0
    if ys:
        yield torch.cat(xs), torch.cat(ys), torch.arange(offset - have, offset, device=device), offset


def evaluate(model, data, eps, norm: str = "linf", attacks=DEFAULT_EVAL_ATTACKS, *, batch_size: int = 256,
             seed=0, device=None, progress: bool = True, checkpoint=None, early_exit: bool = True,
             amp=None, compile: bool = False, channels_last: bool = False) -> Evaluation:
    """Robust accuracy as the worst case over a cascade of attacks, AutoAttack style.

    Clean accuracy first; then each attack in ``attacks`` runs only on the samples still
    robust, and a sample counts as robust only if no attack fooled it at any iterate.
    ``attacks``: names from ``EVAL_ATTACKS`` ("apgd-ce", "apgd-dlr", "apgd-t" at 100 steps,
    "square" at 5000 queries, "pgd" at 50 steps, "fgsm") or attack objects (their own eps
    and norm). ``data`` as in robust_accuracy.

    Continuous batching: the data is read in chunks of ``4 * batch_size`` samples; each
    attack runs its work items (samples; APGD-T's (sample, target) runs) through a working
    batch of ``batch_size`` rows, and with ``early_exit`` an item leaves the batch the
    moment it fools the model, its slot taken by the next item: every model call runs at
    the full batch size until the chunk runs dry. ``early_exit=False`` keeps fooled items
    in the batch until their iterations end (the same results, more passes: to measure
    it). ``stats`` of the result counts the work: sample-passes ``forward_backward`` and
    ``forward`` (one sample through the model once), ``seconds``, ``seconds_per_attack``.

    Cheaper passes (advx._accel): ``amp="bf16"`` or ``"fp16"`` runs the model under
    autocast (the perturbation and the returned examples stay float32, inside the
    budget); ``compile=True`` runs it through ``torch.compile`` (eager, with a warning,
    when it does not compile); ``channels_last=True`` gives a convolutional model its
    inputs channels-last. The caller's model is never changed. Only the attacks' search
    runs the faster model: clean accuracy and whether an attack's example fools the
    model are decided by the model as given (float32, eager), so a success that exists
    only in bfloat16 is not counted, and that sample goes on to the next attack.

    ``checkpoint``: a file path. The per-sample results are written there after every
    chunk (atomically: a temporary file, then a rename), and a rerun with the same
    arguments continues after the last finished chunk instead of starting over; a file
    from another model, data, eps, norm, attack list or seed is refused with a message
    naming what differs. Each sample's random numbers come from (seed, its index), so a
    resumed run gives the uninterrupted run's result.

    Inside an initialized torch.distributed process group (e.g. under ``torchrun``), each
    rank evaluates a contiguous shard of the data and every rank returns the whole
    result, gathered in dataset order: the same per-sample result as one process (each
    rank's checkpoint is ``PATH.rank<r>of<n>``).
    """
    from . import _checkpoint, _distributed, _validate

    eps = _validate.positive(eps, "eps")
    norm = _validate.norm(norm, _validate.L1_NORMS)
    batch_size = _check_batch_size(batch_size)
    if not isinstance(early_exit, bool):
        raise TypeError(f"early_exit must be a bool, got {type(early_exit).__name__}")
    if isinstance(attacks, (str, Attack)):
        attacks = [attacks]
    notes: list = []
    if norm == "l1" and tuple(attacks) == DEFAULT_EVAL_ATTACKS:
        # Square has no L1 form here: the L1 cascade is APGD-CE then APGD-T (L1 APGD)
        attacks = L1_EVAL_ATTACKS
    named = [_eval_attack(a, model, eps, norm, seed) for a in attacks]
    if not named:
        raise ValueError("attacks is empty")
    for name, atk in named:
        if atk.targeted:
            raise ValueError(f"attack {name} is targeted; the evaluation needs untargeted attacks")
    loader = _loader(data, batch_size)
    device = torch.device(device) if device is not None else default_device(model)
    rank, ranks = _distributed.world()
    first_index = 0  # dataset index of this process's first sample
    if ranks > 1:
        loader, first_index = _distributed.shard(loader, rank, ranks)
        progress = progress and rank == 0
        if checkpoint is not None:
            checkpoint = f"{checkpoint}.rank{rank}of{ranks}"
    clean, robust, fooled_by, distance = [], [], [], []
    zero = bad = 0
    resume = None if checkpoint is None else _checkpoint.load(checkpoint)
    seconds: dict = {}
    began = _clock(device)
    with eval_mode(model), count_passes() as passes:
        bar = _progress_bar(_length(loader), progress)
        # samples before ``done`` are another rank's, or were finished before an interruption
        done = first_index if resume is None else int(resume["done"])
        for x, y, positions, offset in _chunks(loader, device, 4 * batch_size, first_index, done):
            if positions is None:  # the first loader batch: fingerprint, faster model, checks
                if checkpoint is not None:
                    want = _checkpoint.fingerprint(model, x[:1], y[:1], _length(loader), eps, norm, named, seed)
                if amp is not None or compile or channels_last:
                    named = _accelerated(model, named, x[:8], amp=amp, compile=compile,
                                         channels_last=channels_last, notes=notes)
                if resume is not None:
                    _checkpoint.check(resume, want, checkpoint)
                    clean, robust = [resume["clean"]], [resume["robust"]]
                    fooled_by, distance = [resume["fooled_by"]], [resume["distance"]]
                    zero, bad, notes = int(resume["zero"]), int(resume["bad"]), list(resume["notes"])
                else:
                    with torch.no_grad():
                        notes += _model_checks(model, x, logits_of(model, x))
                continue
            with torch.no_grad():  # the verdicts are the model's own, not its faster stand-in's
                logits = logits_of(model, x)
            ok, still, by, dist, z, b = _attack_batch(model, named, x, y, logits, positions, batch_size=batch_size,
                                                      early_exit=early_exit, seconds=seconds,
                                                      bar=None if isinstance(bar, _NoBar) else bar)
            zero, bad = zero + z, bad + b
            clean.append(ok.cpu())
            robust.append(still.cpu())
            fooled_by.append(by.cpu())
            distance.append(dist.cpu())
            so_far = torch.cat(robust)
            bar.set_postfix(robust=f"{float(so_far.float().mean()):.3f}")
            if checkpoint is not None:
                _checkpoint.save(checkpoint, {
                    "fingerprint": want, "done": offset, "clean": torch.cat(clean), "robust": torch.cat(robust),
                    "fooled_by": torch.cat(fooled_by), "distance": torch.cat(distance), "zero": zero, "bad": bad,
                    "notes": list(notes)})
        bar.close()
    stats = {"forward_backward": passes.forward_backward, "forward": passes.forward,
             "seconds": round(_clock(device) - began, 4),
             "seconds_per_attack": {name: round(seconds.get(name, 0.0), 4) for name, _ in named}}
    if ranks > 1:  # every rank gets every sample's result, in dataset order
        parts = _distributed.gather([torch.cat(t) if t else None for t in (clean, robust, fooled_by, distance)]
                                    + [zero, bad, notes, stats])
        clean, robust, fooled_by, distance = ([p[k] for p in parts if p[k] is not None] for k in range(4))
        zero, bad = sum(p[4] for p in parts), sum(p[5] for p in parts)
        notes = list(dict.fromkeys(note for p in parts for note in p[6]))
        every = [p[7] for p in parts]  # passes add up; the slowest rank's times
        stats = {"forward_backward": sum(t["forward_backward"] for t in every),
                 "forward": sum(t["forward"] for t in every), "seconds": max(t["seconds"] for t in every),
                 "seconds_per_attack": {name: max(t["seconds_per_attack"][name] for t in every) for name, _ in named}}
    if not clean:
        raise ValueError("data is empty")
    clean_t, robust_t, by_t = torch.cat(clean), torch.cat(robust), torch.cat(fooled_by)
    n = clean_t.numel()
    after = []
    for j in range(len(named)):
        fooled_so_far = (by_t >= 0) & (by_t <= j)
        after.append(float((clean_t & ~fooled_so_far).float().sum()) / n)
    for note in notes:
        warnings.warn(f"evaluate: {note}", EvaluationWarning, stacklevel=2)
    if zero or bad:
        notes.append(f"{zero} attacked sample-runs had a zero input gradient and {bad} non-finite logits, loss "
                     "or gradient: their robustness is no evidence (gradient masking)")
        warnings.warn(f"evaluate: {notes[-1]}", GradientMaskingWarning, stacklevel=2)
    return Evaluation(attacks=[name for name, _ in named], norm=norm, eps=float(eps), clean=clean_t, robust=robust_t,
                      fooled_by=by_t, distance=torch.cat(distance), after_attack=after, zero_grad=int(zero),
                      nonfinite=int(bad), warnings=notes, stats=stats)


def _accelerated(model, named, example, *, amp, compile, channels_last, notes):
    """The attacks of ``named`` that run ``model`` made to run advx._accel's faster model
    instead (copies: the caller's attack objects are not changed); ``example``: a few
    inputs for the compile trial."""
    import copy

    from ._accel import accelerate

    fast, found = accelerate(model, example, compile=compile, channels_last=channels_last, amp=amp)
    for note in found:
        notes.append(note)
    out = []
    for name, atk in named:
        if atk.model is model:
            atk = copy.copy(atk)
            atk.model = fast
        out.append((name, atk))
    return out
