"""End-to-end PGD-10 throughput (images/s), L-inf and L2, on a digits-sized CNN
(1x8x8) and a CIFAR-shaped ResNet-18 (3x32x32, random weights), all in one run:

- advx.attacks.PGD (fused advx.ops.pgd_step_, per-sample bookkeeping),
- a bare loop around advx.ops.pgd_step_ (no bookkeeping: the price of the result),
- the same loop in plain eager PyTorch (advx.reference.pgd_step_),
- torchattacks 3.5 PGD / PGDL2 (if importable),
- on CUDA only: the advx loop captured as one CUDA graph, and advx PGD under
  bfloat16 autocast with a float32 perturbation.

    python benchmarks/bench_attacks.py [--device cpu|cuda] [--quick] [--threads N] [--out benchmarks/results]

Writes <out>/attacks-<device>-<date>.json and .md."""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_seconds, row, run_meta, write_results  # noqa: E402

import advx  # noqa: E402
from advx import ops, reference  # noqa: E402

STEPS = 10
BUDGETS = {"linf": (8 / 255, 2 / 255), "l2": (0.5, 0.1)}


# -- the models (random weights: only the timing matters) --------------------------------

def digits_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18_cifar(classes: int = 10) -> nn.Module:
    """ResNet-18 for 32x32 inputs: 3x3 stem, no max-pool, [2, 2, 2, 2] basic blocks."""
    layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


# -- the implementations ------------------------------------------------------------------

def bare_loop(step_fn, model, x, y, eps, alpha, norm):
    """PGD-10 with random start and nothing else: the loop every library runs."""
    if norm == "linf":
        x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp_(0, 1)
    else:
        noise = torch.randn_like(x)
        radius = eps * torch.rand(x.shape[0], device=x.device).pow(1.0 / x[0].numel())
        noise *= (radius / noise.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
        x_adv = (x + noise).clamp_(0, 1)
    x_adv.requires_grad_(True)
    for _ in range(STEPS):
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        step_fn(x_adv, grad, x, eps, alpha, norm)
    return x_adv.detach()


def graphed_attack(model, x, y, eps, alpha, norm):
    """The bare advx loop captured once as a CUDA graph; replay() runs all ten steps."""
    static_x, static_y = x.clone(), y.clone()

    def attack():
        return bare_loop(ops.pgd_step_, model, static_x, static_y, eps, alpha, norm)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up on a side stream, as graph capture requires
            attack()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_adv = attack()

    def replay():
        graph.replay()
        return static_adv

    return replay


def implementations(model, x, y, norm, device) -> dict:
    eps, alpha = BUDGETS[norm]
    atk = advx.attacks.PGD(model, eps, alpha, STEPS, norm, random_start=True, seed=0)
    impls = {
        "advx.attacks.PGD": lambda: atk(x, y),
        "advx.ops loop": lambda: bare_loop(ops.pgd_step_, model, x, y, eps, alpha, norm),
        "eager PyTorch loop": lambda: bare_loop(reference.pgd_step_, model, x, y, eps, alpha, norm),
    }
    try:
        import torchattacks
    except ImportError:
        torchattacks = None
    if torchattacks is not None:
        ta = (torchattacks.PGD(model, eps=eps, alpha=alpha, steps=STEPS) if norm == "linf"
              else torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=STEPS))
        impls["torchattacks 3.5"] = lambda: ta(x, y)
    if device == "cuda":
        try:
            impls["advx.ops loop, CUDA graph"] = graphed_attack(model, x, y, eps, alpha, norm)
        except RuntimeError as err:  # report, never crash the benchmark
            print(f"CUDA-graph capture failed: {err}", file=sys.stderr)

        def bf16():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return atk(x, y)  # x, the perturbation and the step stay float32
        impls["advx.attacks.PGD, bf16 autocast"] = bf16
    return impls


def interleaved_medians(impls: dict, device: str, *, warmup: int, reps: int) -> dict:
    """Median seconds of each implementation, timed round-robin (one run of each per
    round) so that a change in machine load hits all of them alike."""
    for fn in impls.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in impls}
    for _ in range(reps):
        for k, fn in impls.items():
            times[k].append(median_seconds(fn, device, warmup=0, reps=1, min_total=0))
    return {k: statistics.median(v) for k, v in times.items()}


def run_case(name: str, model: nn.Module, shape, batch: int, device: str, timing: dict) -> list[dict]:
    torch.manual_seed(0)
    model = model.to(device).eval()
    x = torch.rand((batch, *shape), device=device)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    rows = []
    for norm in ("linf", "l2"):
        impls = implementations(model, x, y, norm, device)
        secs = interleaved_medians(impls, device, **timing)
        base = secs["advx.attacks.PGD"]
        for impl, s in secs.items():
            r = row(f"PGD-{STEPS} {norm} {name}", f"{batch}x" + "x".join(map(str, shape)), impl, s,
                    advx_seconds=base)
            r["images_per_s"] = batch / s
            rows.append(r)
            print(f"{r['case']:<28} {impl:<34} {r['images_per_s']:>10.1f} img/s", flush=True)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# advx attack benchmark: {meta['device_name']}", "",
             f"torch {meta['torch']}, advx {meta['advx']}, {meta['date']}; PGD-{STEPS} with random start, "
             "medians of repeated runs, all implementations timed in the same run. "
             "`advx x` = how many times faster advx.attacks.PGD is.", "",
             "| case | batch | impl | images/s | median ms | advx x |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['size']} | {r['impl']} | {r['images_per_s']:.1f} | "
                     f"{r['median_ms']:.2f} | {r['speedup_of_advx']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="fewer repeats, digits CNN only")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (torch.set_num_threads); on a machine shared with other jobs, "
                        "1 avoids OpenMP threads waiting on each other")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda but no GPU is available")
    # CPU: small batches and few repeats keep the run to a minute or two on 2 cores
    small = dict(warmup=2, reps=10) if not args.quick else dict(warmup=1, reps=3)
    large = dict(warmup=1, reps=3) if not cuda else small
    rows = run_case("digits CNN", digits_cnn(), (1, 8, 8), 4096 if cuda else 256, args.device, small)
    if not args.quick:
        rows += run_case("ResNet-18", resnet18_cifar(), (3, 32, 32), 256 if cuda else 4, args.device, large)
    meta = run_meta(args.device, steps=STEPS)
    text = markdown(rows, meta)
    print(text)
    write_results(args.out, f"attacks-{args.device}-{meta['date']}", meta, rows, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
