"""edge_energy forward+backward: advx.ops vs the eager reference vs torch.compile of the
reference, timed in one run. Standalone: python benchmarks/bench_edge.py [--device cuda]
[--quick] [--threads N]; prints a table and writes benchmarks/results/edge_energy_<device>[_<N>t].{json,md}."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import compare  # noqa: E402

import advx  # noqa: E402


def _fwd_bwd(fn, x):
    def step():
        x.grad = None
        fn(x).sum().backward()
    return step


def _fwd(fn, x):
    def step():
        with torch.no_grad():
            fn(x)
    return step


def shapes(device) -> list[tuple[int, int, int, int]]:
    out = [(1, 3, 224, 224), (16, 3, 224, 224)]
    if torch.device(device).type == "cuda":
        out.append((64, 3, 224, 224))
    return out


def run(device="cpu", quick=False) -> list[dict]:
    """Rows from common.compare: "edge_energy fwd+bwd" (and "edge_energy fwd" unless
    quick) per shape, impls advx / eager / compile in that order."""
    timing = dict(warmup=2, reps=5, min_total=0.1) if quick else dict(warmup=3, reps=15, min_total=0.5)
    compiled = torch.compile(advx.reference.edge_energy, dynamic=False)
    rows = []
    for shape in shapes(device):
        size = "x".join(map(str, shape))
        x = torch.randn(shape, device=device).requires_grad_(True)
        impls = {"advx": advx.ops.edge_energy, "eager": advx.reference.edge_energy, "compile": compiled}
        rows += compare("edge_energy fwd+bwd", size, {k: _fwd_bwd(f, x) for k, f in impls.items()},
                        device, **timing)
        if not quick:
            rows += compare("edge_energy fwd", size, {k: _fwd(f, x) for k, f in impls.items()},
                            device, **timing)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| case | size | impl | median ms | advx speedup |", "|---|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['size']} | {r['impl']} | {r['median_ms']:.3f} | "
                     f"{r['speedup_of_advx']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.device, args.quick)
    dev = torch.device(args.device)
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    header = (f"edge_energy on {device_name}, torch {torch.__version__}, "
              f"{datetime.datetime.now().isoformat(timespec='seconds')}")
    text = header + "\n\n" + table(rows)
    print(text)
    if not args.no_save:
        out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
        os.makedirs(out_dir, exist_ok=True)
        suffix = f"_{args.threads}t" if args.threads else ""
        stem = os.path.join(out_dir, f"edge_energy_{dev.type}{suffix}")
        with open(stem + ".json", "w") as f:
            json.dump({"device": device_name, "torch": torch.__version__, "date": header.rsplit(", ", 1)[1],
                       "build_info": advx.build_info(), "rows": rows}, f, indent=1)
        with open(stem + ".md", "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
