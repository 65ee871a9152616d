#!/usr/bin/env python3
"""Calls every CUDA kernel instantiation of advx once, on small inputs, and synchronizes
after each call: the workload for compute-sanitizer (memcheck, racecheck, synccheck,
initcheck). Covered: project_ and pgd_step_ (linf, l2), project_onto_ and apgd_step_ (linf, l2, l1) and the four optimizer ops x
float32/float64/float16/bfloat16, on vector-path, odd-length, misaligned and multi-block
inputs; the optimizers with no constraint, a box, L-inf and L2 balls (around the origin
and around centers), with an lr tensor, GradScaler's grad_scale/found_inf (also a
skipped step), every rule variant (momentum, nesterov, centered, amsgrad) and more than
24 tensors in one call (a second chunk table); edge_energy forward and backward;
sample_bits (empty, one element, odd and multi-block sizes, strided draws).

    compute-sanitizer --tool memcheck --error-exitcode 1 python3 tools/cuda_sanitize_driver.py
    python3 tools/cuda_sanitize_driver.py --device cpu     # dry run of the same calls on the CPU
    python3 tools/cuda_sanitize_driver.py --list           # the call names only

Exit status: 0 when every call ran, 1 when one raised (listed at the end), 2 when the
device is not there (no torch, no GPU, or advx built without CUDA)."""
from __future__ import annotations

import argparse
import sys
import time


def _fail_setup(message: str) -> int:
    print(f"cuda_sanitize_driver: {message}", file=sys.stderr)
    return 2


def build_calls(device: str, big: bool):
    """[(name, fn)]: each fn makes its inputs and makes one op call."""
    import torch

    import advx
    from advx import ops
    from advx.constraints import Constraint

    class PerParam(Constraint):
        """One [B] radius tensor (and center) per parameter: what the kernels take."""

        def __init__(self, centers, radii, norm, lo, hi):
            self.centers, self.radii, self.norm, self.lo, self.hi = centers, radii, norm, lo, hi

        def kernel_args(self, params, positions=None):
            return list(self.centers or []), list(self.radii), self.norm, self.lo, self.hi

    dtypes = {"f32": torch.float32, "f64": torch.float64, "f16": torch.float16, "bf16": torch.bfloat16}
    calls = []

    def math_dtype(dtype):
        return torch.float64 if dtype == torch.float64 else torch.float32

    def rand(shape, dtype, *, positive=False, misaligned=False, scale=1.0):
        t = torch.randn(shape, device=device, dtype=torch.float32) * scale
        t = (t.abs() if positive else t).to(dtype)
        if misaligned:  # one element into a buffer: not 16-byte aligned, the scalar path
            buf = torch.zeros(t.numel() + 1, dtype=dtype, device=device)
            view = buf[1:].view(t.shape)
            view.copy_(t)
            return view
        return t

    # ------------------------------------------------------------ project_ / pgd_step_
    layouts = {
        "vector": dict(shape=(3, 1024)),          # row length a multiple of 8: vector loads
        "odd": dict(shape=(3, 37)),               # scalar path
        "misaligned": dict(shape=(3, 64), misaligned=True),
        "multi-block": dict(shape=(2, 20000)),    # several reduction blocks per sample
    }
    for dname, dtype in dtypes.items():
        for norm in ("linf", "l2"):
            for lname, spec in layouts.items():
                shape, mis = spec["shape"], spec.get("misaligned", False)

                def project(shape=shape, mis=mis, dtype=dtype, norm=norm):
                    d = rand(shape, dtype, misaligned=mis, scale=0.3)
                    eps = torch.linspace(0.05, 2.0, shape[0], device=device, dtype=math_dtype(dtype))
                    ops.project_(d, eps, norm)

                def pgd(shape=shape, mis=mis, dtype=dtype, norm=norm):
                    x = rand(shape, dtype, positive=True, misaligned=mis)
                    g = rand(shape, dtype, misaligned=mis)
                    xo = rand(shape, dtype, positive=True, misaligned=mis)
                    eps = torch.linspace(0.05, 2.0, shape[0], device=device, dtype=math_dtype(dtype))
                    ops.pgd_step_(x, g, xo, eps, 0.01, norm)
                    ops.pgd_step_(x, g, xo, 0.5, 0.01, norm, bounds=None)

                calls.append((f"project_ {norm} {dname} {lname}", project))
                calls.append((f"pgd_step_ {norm} {dname} {lname}", pgd))
        for norm in ("linf", "l2", "l1"):
            for lname, spec in layouts.items():
                shape, mis = spec["shape"], spec.get("misaligned", False)

                def onto(shape=shape, mis=mis, dtype=dtype, norm=norm):
                    x = rand(shape, dtype, misaligned=mis)
                    c = rand(shape, dtype, positive=True, misaligned=mis)
                    eps = torch.linspace(0.05, 2.0, shape[0], device=device, dtype=math_dtype(dtype))
                    ops.project_onto_(x, c, eps, norm)

                calls.append((f"project_onto_ {norm} {dname} {lname}", onto))

                def apgd(shape=shape, mis=mis, dtype=dtype, norm=norm):
                    x = rand(shape, dtype, positive=True, misaligned=mis)
                    xp = rand(shape, dtype, positive=True, misaligned=mis)
                    g = rand(shape, dtype, misaligned=mis)
                    xo = rand(shape, dtype, positive=True, misaligned=mis)
                    eps = torch.linspace(0.05, 2.0, shape[0], device=device, dtype=math_dtype(dtype))
                    ops.apgd_step_(x, xp, g, xo, eps, 2 * eps, 0.75, norm)
                    ops.apgd_step_(x, xp, g, xo, 0.5, 0.1, 1.0, norm, bounds=None)

                calls.append((f"apgd_step_ {norm} {dname} {lname}", apgd))

    # ------------------------------------------------------------ optimizers
    shapes = [(3, 37), (4, 64), (2, 70001), (), (0, 5)]  # odd, vector, two 64K chunks, 0-dim, empty

    def params_for(dtype, shape_list):
        ps = [rand(s, dtype) for s in shape_list]
        ps.append(rand((3, 33), dtype, misaligned=True))
        return ps

    def constraint_for(kind, params, dtype):
        if kind == "none":
            return None
        if kind == "box":
            return advx.Box(-1.0, 1.0)
        norm, around = kind.split("-")
        centers = [rand(p.shape, dtype) for p in params] if around == "center" else None
        return PerParam(centers, [torch.full((p.shape[0] if p.dim() else 1,), 0.5 if norm == "linf" else 3.0,
                                              device=device, dtype=math_dtype(dtype)) for p in params],
                         norm, -2.0, 2.0)

    variants = {
        "sgd_step_": [dict(momentum=0.9, dampening=0.1, weight_decay=0.01, maximize=True),
                      dict(momentum=0.0), dict(momentum=0.9, nesterov=True)],
        "adagrad_step_": [dict(lr_decay=0.01, weight_decay=0.01, maximize=True)],
        "rmsprop_step_": [dict(momentum=0.9, centered=True, weight_decay=0.01), dict(centered=True),
                          dict(momentum=0.9), dict()],
        "adam_step_": [dict(amsgrad=True, decoupled_weight_decay=True, weight_decay=0.01), dict()],
    }
    constraints = ["none", "box", "linf-origin", "linf-center", "l2-origin", "l2-center", "onto_l2-center", "onto_l1-origin"]

    def optim_call(rule, flags, dtype, kind, *, found_inf=0.0, scalars=True, shape_list=shapes):
        params = params_for(dtype, shape_list)

        def like(positive=False):
            return [rand(p.shape, dtype, positive=positive) for p in params]

        steps = [torch.tensor(3.0, device=device) for _ in params]
        extra = dict(constraint=constraint_for(kind, params, dtype))
        if scalars:
            extra.update(lr=torch.tensor(0.01, device=device), grad_scale=torch.tensor(2.0, device=device),
                         found_inf=torch.tensor(found_inf, device=device))
        else:
            extra.update(lr=0.01)
        grads = like()
        if rule == "sgd_step_":
            bufs = like() if flags.get("momentum", 0.0) else []
            if bufs:
                bufs[0] = None  # a new buffer: the kernel's first-step path
            ops.sgd_step_(params, grads, bufs, **flags, **extra)
        elif rule == "adagrad_step_":
            ops.adagrad_step_(params, grads, like(True), steps, **flags, **extra)
        elif rule == "rmsprop_step_":
            sq = like(True)
            ga = [0.1 * s for s in sq] if flags.get("centered") else []
            mb = like() if flags.get("momentum", 0.0) else []
            ops.rmsprop_step_(params, grads, sq, ga, mb, steps, **flags, **extra)
        else:
            sq = like(True)
            mx = [1.5 * s for s in sq] if flags.get("amsgrad") else []
            ops.adam_step_(params, grads, like(), sq, mx, steps, **flags, **extra)

    for dname, dtype in dtypes.items():
        for rule, flag_list in variants.items():
            for kind in constraints:
                calls.append((f"{rule} {dname} {kind}",
                              lambda r=rule, f=flag_list[0], d=dtype, k=kind: optim_call(r, f, d, k)))
            for i, flags in enumerate(flag_list[1:], 1):
                calls.append((f"{rule} {dname} variant{i} linf-center",
                              lambda r=rule, f=flags, d=dtype: optim_call(r, f, d, "linf-center")))
            calls.append((f"{rule} {dname} found_inf (skipped step)",
                          lambda r=rule, f=flag_list[0], d=dtype: optim_call(r, f, d, "l2-center", found_inf=1.0)))
            calls.append((f"{rule} {dname} float lr, no GradScaler",
                          lambda r=rule, f=flag_list[0], d=dtype: optim_call(r, f, d, "box", scalars=False)))
        many = [(5, 7), (64,), (3,), (2, 9)] * 8  # 32 tensors: past the 24-tensor chunk table
        calls.append((f"adam_step_ {dname} 32 tensors linf-center",
                      lambda d=dtype: optim_call("adam_step_", variants["adam_step_"][0], d, "linf-center",
                                                 shape_list=many)))
    if big:  # > 320 blocks of 65536 elements: the table rolls over inside one tensor
        calls.append(("adam_step_ f32 21M-element tensor linf-center",
                      lambda: optim_call("adam_step_", variants["adam_step_"][0], torch.float32, "linf-center",
                                         shape_list=[(3, 7_000_001), (5, 7)])))

    # ------------------------------------------------------------ edge_energy
    edge_shapes = {"37x41": ((2, 3, 37, 41), False), "channels_last": ((2, 3, 16, 16), True),
                   "one level": ((1, 1, 6, 6), False), "no level": ((1, 2, 5, 9), False)}
    for dname, dtype in dtypes.items():
        for sname, (shape, cl) in edge_shapes.items():
            def edge(shape=shape, cl=cl, dtype=dtype):
                x = rand(shape, dtype)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                x.requires_grad_(True)
                energy = ops.edge_energy(x)
                (grad,) = torch.autograd.grad(energy, x, torch.ones_like(energy), create_graph=True)
                (grad2,) = torch.autograd.grad(grad.sum(), x)  # edge_energy_backward's own backward
                return grad2
            calls.append((f"edge_energy fwd+bwd+bwd2 {dname} {sname}", edge))

    # ------------------------------------------------------------ sample_bits
    for rows, count in ((0, 3), (1, 1), (7, 13), (3, 70_001)):  # empty, one, odd, multi-block
        def bits(rows=rows, count=count):
            indices = torch.randint(0, 2 ** 62, (rows,), device=device)
            draws = torch.randint(-2 ** 40, 2 ** 40, (2 * rows,), device=device)[::2]  # strided
            return ops.sample_bits(indices, draws, 0x12345678, count)
        calls.append((f"sample_bits {rows}x{count}", bits))
    return calls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cuda (default; what compute-sanitizer checks) or cpu (a dry run of the call list)")
    parser.add_argument("--big", action="store_true",
                        help="also one optimizer call on a 21M-element tensor (chunk-table rollover; slow "
                             "under racecheck/initcheck)")
    parser.add_argument("--list", action="store_true", help="print the call names and exit")
    parser.add_argument("--verbose", action="store_true", help="one line per call")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        return _fail_setup(f"{sys.executable} has no torch")
    if args.device == "cuda" and not args.list and not torch.cuda.is_available():
        return _fail_setup("no CUDA GPU visible to torch (use --device cpu for a dry run of the call list)")
    try:
        import advx
    except Exception as exc:  # noqa: BLE001 - one clear line, not a traceback
        return _fail_setup(f"cannot import advx: {type(exc).__name__}: {exc}")
    if args.list:
        for name, _ in build_calls("cpu", args.big):
            print(name)
        return 0
    if args.device == "cuda" and not advx.build_info()["cuda"]:
        return _fail_setup("advx was built without CUDA kernels (build_info()['cuda'] is False)")

    calls = build_calls(args.device, args.big)
    torch.manual_seed(0)
    failures = []
    start = time.perf_counter()
    for name, fn in calls:
        try:
            fn()
            if args.device == "cuda":
                torch.cuda.synchronize()
            if args.verbose:
                print(f"ok   {name}", flush=True)
        except Exception as exc:  # noqa: BLE001 - report every failing call, then fail
            failures.append(name)
            print(f"FAIL {name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", flush=True)
    took = time.perf_counter() - start
    print(f"cuda_sanitize_driver: {len(calls) - len(failures)}/{len(calls)} calls ran on {args.device} "
          f"in {took:.1f} s (torch {torch.__version__}, advx {advx.build_info()})")
    if failures:
        print("cuda_sanitize_driver: failed calls: " + "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
