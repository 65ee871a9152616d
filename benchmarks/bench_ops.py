"""Benchmark advx's fused ops against the eager reference and torch.compile(reference),
and advx.optim against torch.optim, all in one run on one device.

    python benchmarks/bench_ops.py [--device cpu|cuda] [--quick] [--out benchmarks/results]

Writes <out>/<device-name>-<date>.json (raw rows) and .md (tables)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_edge  # noqa: E402
import bench_optim  # noqa: E402
from common import compare, copy_gbps, run_meta, write_results  # noqa: E402

from advx import ops, reference  # noqa: E402


def _compiled(fn):
    return torch.compile(fn, dynamic=False)


def pgd_cases(device: str, quick: bool) -> list[dict]:
    rows = []
    if device == "cuda":
        flat = [1 << 20, 16 << 20, 64 << 20]
        l2_shapes = [(256, 3, 32, 32), (4096, 784), (8, 3, 512, 512)]
    else:
        flat = [1 << 16, 4 << 20]
        l2_shapes = [(256, 3, 32, 32), (4096, 784), (8, 3, 256, 256)]
    if quick:
        flat, l2_shapes = flat[:1] + flat[-1:], l2_shapes[:1]
    ref_pgd, ref_proj = _compiled(reference.pgd_step_), _compiled(reference.project_)
    shapes = [("linf", (n // 1024, 1024)) for n in flat] + [("l2", s) for s in l2_shapes]
    shapes += [("l2", (n // 1024, 1024)) for n in flat[-1:]]
    for norm, shape in shapes:
        x = torch.rand(shape, device=device)
        g, xo = torch.randn_like(x), torch.rand_like(x)
        eps, alpha = (8 / 255, 2 / 255) if norm == "linf" else (0.5, 0.1)
        nbytes = 4 * x.numel() * x.element_size()  # reads x, g, x_orig; writes x
        size = "x".join(map(str, shape))
        rows += compare(f"pgd_step_ {norm}", size, {
            "advx": lambda: ops.pgd_step_(x, g, xo, eps, alpha, norm),
            "eager reference": lambda: reference.pgd_step_(x, g, xo, eps, alpha, norm),
            "torch.compile(reference)": lambda: ref_pgd(x, g, xo, eps, alpha, norm),
        }, device, nbytes=nbytes, copy=copy_gbps(nbytes, device))
        d = torch.randn_like(x) * 0.01
        nbytes = 2 * d.numel() * d.element_size()
        rows += compare(f"project_ {norm}", size, {
            "advx": lambda: ops.project_(d, eps, norm),
            "eager reference": lambda: reference.project_(d, eps, norm),
            "torch.compile(reference)": lambda: ref_proj(d, eps, norm),
        }, device, nbytes=nbytes, copy=copy_gbps(nbytes, device))
    return rows


def apgd_cases(device: str, quick: bool) -> list[dict]:
    """apgd_step_ (one APGD iteration: momentum step and both projections) against its
    eager reference and torch.compile of it (L1: no compile, its bisection reads back)."""
    rows = []
    shapes = [(256, 3, 32, 32), (4096, 784)] if not quick else [(256, 3, 32, 32)]
    if device == "cuda":
        shapes = [(256, 3, 32, 32), (4096, 3, 32, 32), (64, 3, 224, 224)] if not quick else shapes
    ref = _compiled(reference.apgd_step_)
    cases = [(norm, shape) for norm in ("linf", "l2") for shape in shapes] + [("l1", shapes[0])]
    for norm, shape in cases:
        x = torch.rand(shape, device=device)
        xp, g, xo = torch.rand_like(x), torch.randn_like(x), torch.rand_like(x)
        if norm == "l1":  # the sparse sign direction the L1 attack passes
            g = g.sign() * (g.abs() > 2.0)
        eps = {"linf": 8 / 255, "l2": 0.5, "l1": 12.0}[norm]
        nbytes = 6 * x.numel() * x.element_size()  # reads x, x_prev, g, x_orig; writes x, x_prev
        impls = {
            "advx": lambda: ops.apgd_step_(x, xp, g, xo, eps, 2 * eps, 0.75, norm),
            "eager reference": lambda: reference.apgd_step_(x, xp, g, xo, eps, 2 * eps, 0.75, norm),
        }
        if norm != "l1":
            impls["torch.compile(reference)"] = lambda: ref(x, xp, g, xo, eps, 2 * eps, 0.75, norm)
        rows += compare(f"apgd_step_ {norm}", "x".join(map(str, shape)), impls, device, nbytes=nbytes,
                        copy=copy_gbps(nbytes, device))
    return rows


def random_cases(device: str, quick: bool) -> list[dict]:
    """sample_bits (advx._rng's per-sample hash) against its eager reference and
    torch.compile of it: Square's draw per query (a few numbers per sample of a working
    batch) and a random start (a number per element of every sample)."""
    rows = []
    shapes = [(256, 3), (256, 784)] + ([] if quick else [(4096, 3 * 32 * 32)])
    ref = _compiled(reference.sample_bits)
    for batch, count in shapes:
        indices = torch.randint(0, 1 << 40, (batch,), device=device)
        draws = torch.randint(0, 5000, (batch,), device=device)
        key = 0x2545F491
        nbytes = 8 * batch * count  # the int64 bits written
        rows += compare("sample_bits", f"{batch}x{count}", {
            "advx": lambda: ops.sample_bits(indices, draws, key, count),
            "eager reference": lambda: reference.sample_bits(indices, draws, key, count),
            "torch.compile(reference)": lambda: ref(indices, draws, key, count),
        }, device, nbytes=nbytes, copy=copy_gbps(nbytes, device))
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# advx benchmark: {meta['device_name']}", "",
             f"torch {meta['torch']}, advx {meta['advx']}, {meta['date']}; medians of repeated runs, "
             "all implementations timed in the same run. `advx x` = how many times faster advx is.", ""]
    lines += ["| case | size | impl | median ms | advx x | GB/s | % of copy |",
              "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        gb = f"{r['gbps']:.1f}" if "gbps" in r else ""
        pct = f"{r['pct_copy']:.0f}%" if "pct_copy" in r else ""
        ratio = f"{r['speedup_of_advx']:.2f}" if "speedup_of_advx" in r else ""
        lines.append(f"| {r['case']} | {r['size']} | {r['impl']} | {r['median_ms']:.3f} | {ratio} | {gb} | {pct} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="fewer sizes")
    p.add_argument("--only", choices=["pgd", "apgd", "random", "edge", "optim"], action="append",
                   help="run only these groups (repeatable)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    groups = args.only or ["pgd", "apgd", "random", "edge", "optim"]
    rows = []
    if "pgd" in groups:
        rows += pgd_cases(args.device, args.quick)
    if "apgd" in groups:
        rows += apgd_cases(args.device, args.quick)
    if "random" in groups:
        rows += random_cases(args.device, args.quick)
    if "edge" in groups:
        rows += bench_edge.run(device=args.device, quick=args.quick)
    if "optim" in groups:
        rows += bench_optim.run(device=args.device, quick=args.quick)
    meta = run_meta(args.device)
    text = markdown(rows, meta)
    print(text)
    # a partial run (--only) gets its own file instead of overwriting the full one
    part = "" if args.only is None else "-" + "-".join(sorted(set(args.only)))
    write_results(args.out, f"ops{part}-{args.device}-{meta['date']}", meta, rows, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
