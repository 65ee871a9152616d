"""Timing on this machine: the median-of-repeats helper that benchmarks/ uses too, and a
quick same-run timing of the fused ops (advx.ops) against their plain-PyTorch references
(advx.reference), and of whole attacks: what `advx bench` and the demo report. The full
benchmarks (benchmarks/*.py in the source tree) time with this module too."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from . import ops, optim, reference
from .ops.constraints import LpBall

__all__ = ["sync", "median_seconds", "quick_timing", "attack_timing", "format_table", "markdown_table", "eval_timing",
           "format_eval_table"]


def sync(device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device="cpu", *, warmup: int = 3, reps: int = 25,
                   min_total: float = 0.25, max_reps: int = 1000) -> float:
    """Median wall time of fn() after ``warmup`` calls; repeats at least ``reps`` times and
    until ``min_total`` seconds have been spent (so tiny ops are not timed from a handful
    of runs), at most ``max_reps`` times."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    spent = 0.0
    while len(times) < reps or (spent < min_total and len(times) < max_reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
    return statistics.median(times)


def _cases(x: torch.Tensor) -> dict[str, tuple[Callable, Callable]]:
    """name -> (fused, reference) zero-argument callables on fresh random inputs."""
    grad, orig = torch.randn_like(x), x.clone()
    delta = (torch.rand_like(x) - 0.5) * 0.2
    cases = {}
    for norm, eps in (("linf", 8 / 255), ("l2", 0.5)):
        cases[f"project_ {norm}"] = (lambda n=norm, e=eps: ops.project_(delta, e, n),
                                     lambda n=norm, e=eps: reference.project_(delta, e, n))
        cases[f"pgd_step_ {norm}"] = (lambda n=norm, e=eps: ops.pgd_step_(x, grad, orig, e, e / 4, n),
                                      lambda n=norm, e=eps: reference.pgd_step_(x, grad, orig, e, e / 4, n))
    cases["edge_energy"] = (lambda: ops.edge_energy(x), lambda: reference.edge_energy(x))
    xg = x.clone().requires_grad_()

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(xg).sum(), [xg])

    cases["edge_energy fwd+bwd"] = (fwd_bwd(ops.edge_energy), fwd_bwd(reference.edge_energy))
    cases["Adam step + L2 ball"] = _constrained_adam(x, grad)
    return cases


def _constrained_adam(x: torch.Tensor, grad: torch.Tensor) -> tuple[Callable, Callable]:
    """One step of projected Adam on a batch of images: advx.optim's fused step against
    torch.optim.Adam followed by the reference projection and box clamp."""
    center, eps = x.clone(), 0.5
    fused_param, plain_param = x.clone(), x.clone()
    fused_param.grad, plain_param.grad = grad, grad
    fused = optim.Adam([fused_param], lr=1e-3, constraint=LpBall(center, eps, "l2", bounds=(0.0, 1.0)))
    plain = torch.optim.Adam([plain_param], lr=1e-3)

    def unfused():
        plain.step()
        with torch.no_grad():
            delta = plain_param - center
            reference.project_(delta, eps, "l2")
            plain_param.copy_((center + delta).clamp_(0.0, 1.0))

    return fused.step, unfused


def quick_timing(device="cpu", *, shape=(128, 3, 32, 32), quick: bool = False) -> list[dict]:
    """Rows {op, shape, device, advx_ms, reference_ms, speedup} for every fused op
    that has a reference (for the optimizer: torch.optim.Adam plus the reference
    projection), on a float32 batch of ``shape``; speedup > 1 means the fused op is
    faster. ``quick`` trades accuracy of the medians for time."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=gen).to(device)
    timing = dict(warmup=2, reps=5, min_total=0.03) if quick else dict(warmup=2, reps=10, min_total=0.1)
    rows = []
    for name, (fused, reference) in _cases(x).items():
        t_fused = median_seconds(fused, device, **timing)
        t_ref = median_seconds(reference, device, **timing)
        rows.append({"op": name, "shape": list(shape), "device": str(device),
                     "advx_ms": t_fused * 1e3, "reference_ms": t_ref * 1e3, "speedup": t_ref / t_fused})
    return rows


def attack_timing(device="cpu", *, batch: int = 128, steps: int = 10, quick: bool = False) -> list[dict]:
    """Rows like :func:`quick_timing` for whole attacks on the digits CNN (untrained: the
    timing does not depend on the weights): advx's PGD (one fused pgd_step_ per step)
    against the same loop with the reference step, and PGD with the fused Adam and
    L2-ball constraint against torch.optim.Adam followed by the reference projection."""
    from .attacks import PGD
    from .models import DigitsCNN

    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    model = DigitsCNN().to(device).eval()
    x = torch.rand((batch, 1, 8, 8), generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    timing = dict(warmup=1, reps=3, min_total=0.0) if quick else dict(warmup=2, reps=7, min_total=0.2)
    rows = []
    for norm, eps in (("linf", 8 / 255), ("l2", 0.5)):
        fused = PGD(model, eps, steps=steps, norm=norm, seed=0)
        plain = _reference_pgd(model, eps, eps * 2.5 / steps, steps, norm)
        t_fused = median_seconds(lambda: fused(x, y), device, **timing)
        t_ref = median_seconds(lambda: plain(x, y), device, **timing)
        rows.append({"op": f"PGD-{norm} x{steps}", "shape": list(x.shape), "device": str(device),
                     "advx_ms": t_fused * 1e3, "reference_ms": t_ref * 1e3, "speedup": t_ref / t_fused})
    return rows


def _reference_pgd(model, eps, alpha, steps, norm):
    """The same PGD loop with reference.pgd_step_ as its step (random start omitted from
    both sides' cost comparison: it is one draw)."""
    import torch.nn.functional as F

    def attack(x, y):
        adv = x.clone()
        for _ in range(steps):
            adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(adv), y), [adv])
            adv = reference.pgd_step_(adv.detach(), grad, x, eps, alpha, norm)
        return adv

    return attack


def markdown_table(header: list[str], cells: list[list[str]], text_columns: int) -> str:
    """A markdown table; the first ``text_columns`` columns left-aligned, numbers right."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    return "\n".join("| " + " | ".join(line) + " |" for line in [header, align, *cells])


def format_table(rows: list[dict]) -> str:
    """The rows of :func:`quick_timing` (or :func:`attack_timing`) as a markdown table."""
    return markdown_table(["op", "shape", "advx ms", "reference ms", "speedup"],
                          [[r["op"], "x".join(str(s) for s in r["shape"]), f"{r['advx_ms']:.3f}",
                            f"{r['reference_ms']:.3f}", f"{r['speedup']:.2f}x"] for r in rows], 2)


# -- the worst-case evaluation against torchattacks (benchmarks/bench_eval.py, advx bench --eval)

EVAL_EPS = 0.1


def robust_training(model, x, y, *, epochs: int, device, seed: int = 0):
    """A copy of ``model`` fine-tuned on L-inf PGD-7 examples (Madry et al.), seeded."""
    import copy

    from .attacks import PGD

    torch.manual_seed(seed)
    robust = copy.deepcopy(model).to(device)
    opt = torch.optim.Adam(robust.parameters(), lr=1e-3)
    x, y = x.to(device), y.to(device)
    for _ in range(epochs):
        for idx in torch.randperm(x.shape[0], device=device).split(64):
            robust.eval()
            adv = PGD(robust, EVAL_EPS, steps=7, seed=None)(x[idx], y[idx])
            robust.train()
            opt.zero_grad()
            F.cross_entropy(robust(adv), y[idx]).backward()
            opt.step()
    return robust.eval()


def torchattacks_cascade(ta, model, x, y, steps: int, queries: int, seed: int):
    """torchattacks' APGD-CE, APGD-T and Square, each on the points still robust."""
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    for atk in (ta.APGD(model, norm="Linf", eps=EVAL_EPS, steps=steps, n_restarts=1, loss="ce", seed=seed),
                ta.APGDT(model, norm="Linf", eps=EVAL_EPS, steps=steps, n_restarts=1, seed=seed),
                ta.Square(model, norm="Linf", eps=EVAL_EPS, n_queries=queries, n_restarts=1, seed=seed)):
        idx = robust.nonzero()[:, 0]
        if idx.numel() == 0:
            break
        adv = atk(x[idx], y[idx])
        with torch.no_grad():
            robust[idx] = model(adv).argmax(1) == y[idx]
    return float(robust.float().mean())


def timed(fn, device, repeats: int):
    """(median wall seconds over ``repeats`` calls, the last call's value)."""
    times, value = [], None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        value = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def eval_timing(device="cpu", *, quick: bool = False, repeats: int = 1) -> list[dict]:
    """Rows {case, size, impl, seconds, robust_accuracy, speedup_of_advx}: advx.eval.evaluate
    (APGD-CE, APGD-T, Square) against torchattacks' same cascade (when importable) on the
    digits test set, for the digits CNN and a PGD-trained copy, L-inf eps 0.1."""
    from .attacks import APGD, APGDT, Square
    from .data import load_digits
    from .eval import evaluate
    from .models import train_digits_cnn

    try:
        import torchattacks as ta
    except ImportError:
        ta = None
    device = torch.device(device)
    steps, queries, n, epochs = (20, 200, 100, 1) if quick else (100, 5000, 450, 3)
    split = load_digits()
    x, y = split.test_images[:n].to(device), split.test_labels[:n].to(device)
    plain = train_digits_cnn().to(device).eval()
    models = {"digits CNN": plain,
              f"digits CNN, PGD-trained ({epochs} epochs)": robust_training(
                  plain, split.train_images, split.train_labels, epochs=epochs, device=device)}
    size = f"{n} images, {steps} steps, {queries} queries"
    rows = []
    for name, model in models.items():
        cascade = [APGD(model, EVAL_EPS, steps=steps, seed=0), APGDT(model, EVAL_EPS, steps=steps, seed=0),
                   Square(model, EVAL_EPS, queries=queries, seed=0)]
        t_advx, ev = timed(lambda: evaluate(model, (x, y), EVAL_EPS, attacks=cascade, progress=False), device,
                           repeats)
        rows.append({"case": name, "size": size, "impl": "advx.eval.evaluate", "seconds": t_advx,
                     "clean_accuracy": ev.clean_accuracy, "robust_accuracy": ev.robust_accuracy,
                     "after_attack": ev.after_attack, "speedup_of_advx": 1.0})
        if ta is not None:
            t_ta, acc = timed(lambda: torchattacks_cascade(ta, model, x, y, steps, queries, 0), device, repeats)
            rows.append({"case": name, "size": size, "impl": "torchattacks 3.5.1 cascade", "seconds": t_ta,
                         "robust_accuracy": acc, "speedup_of_advx": t_ta / t_advx})
    return rows


def format_eval_table(rows: list[dict]) -> str:
    """The rows of :func:`eval_timing` as a markdown table."""
    return markdown_table(["model", "setting", "implementation", "wall s", "robust acc", "speedup of advx"],
                          [[r["case"], r["size"], r["impl"], f"{r['seconds']:.2f}", f"{r['robust_accuracy']:.4f}",
                            f"{r['speedup_of_advx']:.2f}x"] for r in rows], 3)
