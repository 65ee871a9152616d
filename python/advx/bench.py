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
from ._runtime import count_passes, logits_of
from .ops.constraints import LpBall

__all__ = ["sync", "median_seconds", "quick_timing", "attack_timing", "format_table", "markdown_table", "eval_timing",
           "model_eval_timing", "format_eval_table", "eval_profile", "format_profile_table"]


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


class _ThroughLogitsOf(torch.nn.Module):
    """``model`` called through advx's logits_of, so that a competitor's passes are
    counted by advx._runtime.count_passes exactly as advx's own."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return logits_of(self.model, x)


def torchattacks_cascade(ta, model, x, y, steps: int, queries: int, seed: int, batch_size: int,
                         eps: float = EVAL_EPS):
    """torchattacks' APGD-CE, APGD-T and Square, each on the points still robust, in
    batches of ``batch_size`` (as AutoAttack's ``bs``: the same working batch as advx's
    evaluate is given): (robust accuracy, forward-backward sample-passes, forward
    sample-passes)."""
    counted = _ThroughLogitsOf(model).eval()
    with count_passes() as passes:
        with torch.no_grad():
            robust = counted(x).argmax(1) == y
        for atk in (ta.APGD(counted, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce", seed=seed),
                    ta.APGDT(counted, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed),
                    ta.Square(counted, norm="Linf", eps=eps, n_queries=queries, n_restarts=1, seed=seed)):
            for idx in robust.nonzero()[:, 0].split(batch_size):
                adv = atk(x[idx], y[idx])
                with torch.no_grad():
                    robust[idx] = counted(adv).argmax(1) == y[idx]
    return float(robust.float().mean()), passes.forward_backward, passes.forward


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


def eval_timing(device="cpu", *, quick: bool = False, repeats: int = 1, batch_size: int = 256) -> list[dict]:
    """Rows {case, size, impl, seconds, robust_accuracy, forward_backward, forward,
    speedup_of_advx}: advx.eval.evaluate (APGD-CE, APGD-T, Square; early exit on and off)
    against torchattacks' same cascade (when importable) on the digits test set, for the
    digits CNN and a PGD-trained copy, L-inf eps 0.1, and on the digits CNN each of
    amp="bf16", channels_last and (not quick) compile alone; then PGD-100 with and without
    early exit on the digits CNN at an eps where most points fall. ``speedup_of_advx``:
    the row's time over default advx's (torchattacks, early_exit=False), or for an option
    row the same ratio, so under 1 means the option made the evaluation faster."""
    from .attacks import PGD
    from .data import load_digits
    from .eval import evaluate
    from .models import train_digits_cnn

    device = torch.device(device)
    steps, queries, n, epochs = (20, 200, 100, 1) if quick else (100, 5000, 450, 3)
    split = load_digits()
    x, y = split.test_images[:n].to(device), split.test_labels[:n].to(device)
    plain = train_digits_cnn().to(device).eval()
    models = {"digits CNN": plain,
              f"digits CNN, PGD-trained ({epochs} epochs)": robust_training(
                  plain, split.train_images, split.train_labels, epochs=epochs, device=device)}
    rows = []
    for name, model in models.items():
        options = [{}, {"early_exit": False}]
        if model is plain:  # each cheaper-pass option alone: its share of the speed-up (ratio < 1: it helps)
            options += [{"amp": "bf16"}, {"channels_last": True}] + ([] if quick else [{"compile": True}])
        rows += model_eval_timing(name, model, x, y, EVAL_EPS, steps=steps, queries=queries, device=device,
                                  batch_size=batch_size, options=options, repeats=repeats)
    pgd_eps, pgd_steps = 0.2, (20 if quick else 100)
    setting = f"{n} images, PGD-{pgd_steps}, eps {pgd_eps}"
    for early_exit in (True, False):
        t, ev = timed(lambda: evaluate(plain, (x, y), pgd_eps, attacks=[PGD(plain, pgd_eps, steps=pgd_steps, seed=0)],
                                       progress=False, batch_size=batch_size, early_exit=early_exit), device, repeats)
        rows.append(_evaluate_row("digits CNN", setting, "" if early_exit else "early_exit=False", t, ev,
                                  1.0 if early_exit else t / rows[-1]["seconds"]))
    return rows


def _evaluate_row(case: str, size: str, option: str, seconds: float, ev, speedup: float) -> dict:
    return {"case": case, "size": size, "impl": "advx.eval.evaluate" + (f", {option}" if option else ""),
            "seconds": seconds, "clean_accuracy": ev.clean_accuracy, "robust_accuracy": ev.robust_accuracy,
            "after_attack": ev.after_attack, "forward_backward": ev.stats["forward_backward"],
            "forward": ev.stats["forward"], "seconds_per_attack": ev.stats["seconds_per_attack"],
            "speedup_of_advx": speedup}


def model_eval_timing(case: str, model, x, y, eps: float, *, steps: int, queries: int, device="cpu",
                      batch_size: int = 256, options=({}, {"amp": "bf16"}), repeats: int = 1) -> list[dict]:
    """Rows as :func:`eval_timing`'s for any model and data (L-inf ``eps``): advx's
    evaluate with each of ``options`` (keyword arguments of evaluate; ``{}``: the
    default) and torchattacks' cascade (when importable) in batches of ``batch_size``,
    same run. ``speedup_of_advx``: torchattacks' time over the default's, or an option
    row's time over the default's."""
    from .attacks import APGD, APGDT, Square
    from .eval import evaluate

    try:
        import torchattacks as ta
    except ImportError:
        ta = None
    x, y = x.to(device), y.to(device)
    size = f"{x.shape[0]} images, {steps} steps, {queries} queries"
    rows = []
    for option in options:
        attacks = [APGD(model, eps, steps=steps, seed=0), APGDT(model, eps, steps=steps, seed=0),
                   Square(model, eps, queries=queries, seed=0)]
        t, ev = timed(lambda: evaluate(model, (x, y), eps, attacks=attacks, progress=False, batch_size=batch_size,
                                       **option), device, repeats)
        label = ", ".join(f"{k}={v!r}" for k, v in option.items())
        rows.append(_evaluate_row(case, size, label, t, ev, t / rows[0]["seconds"] if rows else 1.0))
    default = rows[0]["seconds"]
    if ta is not None:
        t_ta, (acc, fb, fw) = timed(lambda: torchattacks_cascade(ta, model, x, y, steps, queries, 0, batch_size, eps),
                                    device, repeats)
        rows.append({"case": case, "size": size, "impl": "torchattacks 3.5.1 cascade", "seconds": t_ta,
                     "robust_accuracy": acc, "forward_backward": fb, "forward": fw,
                     "speedup_of_advx": t_ta / default})
    return rows


class _Scoped(torch.nn.Module):
    """``model`` with its forward passes under one profiler label."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.profiler.record_function("model forward"):
            return self.model(x)


def eval_profile(device="cpu", *, quick: bool = False, batch_size: int = 256) -> list[dict]:
    """Where an evaluation's time goes, per attack, from torch.profiler on the digits CNN:
    rows {attack, seconds, model_forward, backward, fused_ops, rest} (fractions of the
    attack's wall time; backward: the autograd engine, mostly the model's; fused ops: the
    advx:: kernels; rest: the loss, bookkeeping and Python)."""
    from torch.profiler import ProfilerActivity, profile

    from .data import load_digits
    from .eval import evaluate, make_attack
    from .models import train_digits_cnn

    device = torch.device(device)
    # shares, not totals: a short run (the profiler keeps every op's event in memory)
    steps, queries, n = (10, 100, 100) if quick else (20, 200, 200)
    split = load_digits()
    x, y = split.test_images[:n].to(device), split.test_labels[:n].to(device)
    model = _Scoped(train_digits_cnn().to(device).eval())
    rows = []
    for name in ("apgd-ce", "apgd-t", "square", "pgd"):
        atk = make_attack(name, model, EVAL_EPS, apgd_steps=steps, queries=queries, pgd_steps=steps)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            ev = evaluate(model, (x, y), EVAL_EPS, attacks=[atk], progress=False, batch_size=batch_size)
        wall = ev.stats["seconds_per_attack"][atk.name] * 1e6
        events = prof.key_averages()
        forward = sum(e.cpu_time_total for e in events if e.key == "model forward")
        backward = sum(e.cpu_time_total for e in events if e.key.startswith("autograd::engine::evaluate_function"))
        fused = sum(e.cpu_time_total for e in events if e.key.startswith("advx::"))
        part = {"model_forward": forward / wall, "backward": backward / wall, "fused_ops": fused / wall}
        part["rest"] = max(0.0, 1.0 - sum(part.values()))
        rows.append({"attack": f"{atk.name} ({steps} steps)" if name != "square" else f"Square ({queries} queries)",
                     "seconds": wall / 1e6, **part})
    return rows


def format_profile_table(rows: list[dict]) -> str:
    return markdown_table(["attack (evaluate, digits CNN)", "wall s", "model forward", "backward", "advx fused ops",
                           "rest (loss, bookkeeping, Python)"],
                          [[r["attack"], f"{r['seconds']:.2f}", f"{r['model_forward']:.0%}", f"{r['backward']:.0%}",
                            f"{r['fused_ops']:.0%}", f"{r['rest']:.0%}"] for r in rows], 1)


def format_eval_table(rows: list[dict]) -> str:
    """The rows of :func:`eval_timing` as a markdown table."""
    return markdown_table(["model", "setting", "implementation", "wall s", "robust acc", "fwd-bwd passes",
                           "fwd passes", "speedup of advx"],
                          [[r["case"], r["size"], r["impl"], f"{r['seconds']:.2f}", f"{r['robust_accuracy']:.4f}",
                            str(r.get("forward_backward", "-")), str(r.get("forward", "-")),
                            f"{r['speedup_of_advx']:.2f}x"] for r in rows], 3)
