"""One optimizer step: advx.optim.X vs torch.optim.X(foreach=True) vs torch.optim.X(fused=True)
(where torch has a fused kernel for the device), on ResNet-50's parameter list and on
1,000 small tensors, all timed in one run.

    python benchmarks/bench_optim.py [--device cpu|cuda] [--quick] [--out benchmarks/results]

run(device, quick) returns the rows (benchmarks/common.compare) for bench_ops.py.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compare, copy_gbps  # noqa: E402

import advx  # noqa: E402

# (name, constructor kwargs, tensors read + written per element and step)
OPTIMIZERS = [
    ("Adam", dict(lr=1e-3), 7),            # read p g m v, write p m v
    ("AdamW", dict(lr=1e-3), 7),
    ("SGD", dict(lr=1e-2, momentum=0.9), 5),  # read p g buf, write p buf
    ("Adagrad", dict(lr=1e-2), 5),         # read p g sum, write p sum
    ("RMSprop", dict(lr=1e-2), 5),         # read p g sq, write p sq
]
TORCH_FUSED = {"Adam", "AdamW", "SGD", "Adagrad"}  # torch.optim has fused=True for these


def resnet50_shapes() -> list[tuple[int, ...]]:
    """The 161 parameter shapes of torchvision's resnet50 (25,557,032 values): a 7x7 stem,
    bottleneck stages of 3, 4, 6, 3 blocks (1x1, 3x3, 1x1 convolutions, each with a
    batch norm weight and bias; a 1x1 downsample in each stage's first block), fc."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for width, blocks in [(64, 3), (128, 4), (256, 6), (512, 3)]:
        for block in range(blocks):
            shapes += [(width, inplanes, 1, 1), (width,), (width,),
                       (width, width, 3, 3), (width,), (width,),
                       (4 * width, width, 1, 1), (4 * width,), (4 * width,)]
            if block == 0:
                shapes += [(4 * width, inplanes, 1, 1), (4 * width,), (4 * width,)]
            inplanes = 4 * width
    return shapes + [(1000, 2048), (1000,)]


def small_shapes(count: int = 1000) -> list[tuple[int, ...]]:
    """`count` small tensors of 1 to 2,048 values (a fixed draw)."""
    gen = torch.Generator().manual_seed(0)
    return [(int(n),) for n in torch.randint(1, 2049, (count,), generator=gen)]


def _optimizer(module, name, shapes, device, **kwargs):
    gen = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(device)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(device)
    return getattr(module, name)(params, **kwargs)


def _fused_supported(name: str, device: str) -> bool:
    """Whether torch.optim's own fused step runs here (torch 2.11 lists CUDA as a fused
    device, yet its Adagrad refuses fused=True there): asked by running one step."""
    if name not in TORCH_FUSED:
        return False
    try:
        p = torch.zeros(2, device=device, requires_grad=True)
        p.grad = torch.ones_like(p)
        getattr(torch.optim, name)([p], lr=0.1, fused=True).step()
    except (RuntimeError, ValueError):
        return False
    return True


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    """Rows for every (optimizer, parameter list): advx first, then torch's foreach and
    fused step, with the speedup of advx over each and the bandwidth against a copy."""
    rows = []
    param_sets = [("resnet50", resnet50_shapes()), ("1000-small", small_shapes())]
    # torch's foreach path on the CPU loops per tensor per operation: seconds per step on
    # the ResNet list, so few repetitions
    timing = dict(warmup=1, reps=3, min_total=0.0) if quick else dict(warmup=2, reps=7, min_total=0.5)
    names = [o for o in OPTIMIZERS if not quick or o[0] in ("Adam", "SGD", "RMSprop")]
    for set_name, shapes in param_sets:
        numel = sum(math.prod(s) for s in shapes)
        for name, kwargs, tensors_moved in names:
            nbytes = tensors_moved * 4 * numel
            copy = copy_gbps(nbytes, device)
            impls = {"advx": _optimizer(advx.optim, name, shapes, device, **kwargs).step,
                     "torch-foreach": _optimizer(torch.optim, name, shapes, device, foreach=True, **kwargs).step}
            if _fused_supported(name, device):
                impls["torch-fused"] = _optimizer(torch.optim, name, shapes, device, fused=True, **kwargs).step
            size = f"{len(shapes)} tensors, {numel / 1e6:.2f}M values"
            rows += compare(f"{name} step / {set_name}", size, impls, device, nbytes=nbytes, copy=copy, **timing)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| case | size | impl | median ms | advx speedup | GB/s | % of copy |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['size']} | {r['impl']} | {r['median_ms']:.3f} | "
                     f"{r.get('speedup_of_advx', float('nan')):.2f}x | {r.get('gbps', float('nan')):.1f} | "
                     f"{r.get('pct_copy', float('nan')):.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer optimizers and repetitions")
    parser.add_argument("--out", default=None, help="directory for bench_optim_<device>.json/.md")
    args = parser.parse_args()
    rows = run(args.device, args.quick)
    info = dict(device=torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({os.cpu_count()} cores, "
                f"{torch.get_num_threads()} threads)", torch=torch.__version__,
                date=datetime.datetime.now().isoformat(timespec="seconds"))
    table = markdown(rows)
    print(f"{info['device']}, torch {info['torch']}, {info['date']}\n\n{table}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"bench_optim_{args.device}.json").write_text(json.dumps(dict(info, rows=rows), indent=1))
        (out / f"bench_optim_{args.device}.md").write_text(
            f"# bench_optim on {info['device']}\n\ntorch {info['torch']}, {info['date']}\n\n{table}\n")


if __name__ == "__main__":
    main()
