"""Timing on this machine: the median-of-repeats helper that benchmarks/ uses too, and a
quick same-run timing of the fused ops (advx.ops) against their plain-PyTorch references
(advx.reference), and of whole attacks: what `advx bench` and the demo report. The full
benchmarks (benchmarks/*.py in the source tree) time with this module too."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from . import ops, optim, reference
from .ops.constraints import LpBall

__all__ = ["sync", "median_seconds", "quick_timing", "attack_timing", "format_table"]


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


def format_table(rows: list[dict]) -> str:
    """The rows of :func:`quick_timing` as a markdown table."""
    lines = ["| op | shape | advx ms | reference ms | speedup |", "|---|---|---:|---:|---:|"]
    for r in rows:
        shape = "x".join(str(s) for s in r["shape"])
        lines.append(f"| {r['op']} | {shape} | {r['advx_ms']:.3f} | {r['reference_ms']:.3f} | {r['speedup']:.2f}x |")
    return "\n".join(lines)
