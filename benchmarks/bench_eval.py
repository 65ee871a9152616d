"""Worst-case robustness evaluation, advx against torchattacks, in one run: wall time and
robust accuracy of advx.eval.evaluate (APGD-CE, APGD-T, Square; each attack on the points
still robust) and of torchattacks 3.5.1's APGD(loss="ce"), APGDT and Square chained the same
way (each on the points the previous ones did not fool), with the same steps, targets,
restarts, queries and seed, on the digits test set (L-inf eps 0.1):

- the digits CNN (advx.models, trained and cached on first use),
- the same CNN made robust by a few epochs of L-inf PGD training (done here, seeded);
- with --resnet, also a CIFAR-sized ResNet-18 (random init: a timing case) on random
  32x32 images labelled by its own predictions, L-inf eps 4/255, default and bf16
  (512 images, 100 steps, 5000 queries: meant for a GPU; --resnet-size sets a smaller
  case for a CPU).

    python benchmarks/bench_eval.py [--device cpu|cuda] [--quick] [--resnet] [--resnet-size N STEPS QUERIES]
                                    [--repeats N] [--out benchmarks/results]

The work is advx.bench.eval_timing (what `advx bench --eval` prints). Times are medians of
--repeats runs (default 1: an evaluation is long). Writes <out>/eval-<device>-<date>.json and .md."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_meta, write_results  # noqa: E402

from advx.bench import (EVAL_EPS, eval_profile, eval_timing, format_eval_table, format_profile_table,  # noqa: E402
                        model_eval_timing)


def resnet_rows(device: str, size, batch_size: int, repeats: int) -> list[dict]:
    """The CIFAR-sized ResNet-18 case: random init, seeded random images it labels itself
    (all clean-correct), so the time is the attacks' alone; ``size``: (images, steps,
    queries)."""
    from bench_attacks import resnet18_cifar

    torch.manual_seed(0)
    model = resnet18_cifar().to(device).eval()
    n, steps, queries = size
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model_eval_timing("CIFAR ResNet-18 (random init), eps 4/255", model, x, y, 4 / 255, steps=steps,
                             queries=queries, device=device, batch_size=batch_size, repeats=repeats)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="100 images, 20 steps, 200 queries, 1 epoch of training")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256, help="evaluate's working batch (default 256)")
    p.add_argument("--resnet", action="store_true", help="also the CIFAR-sized ResNet-18 case (for a GPU)")
    p.add_argument("--resnet-size", type=int, nargs=3, metavar=("IMAGES", "STEPS", "QUERIES"),
                   help="the ResNet case's size (implies --resnet; default 512 100 5000, --quick 32 5 50)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import torchattacks  # noqa: F401
    except ImportError:
        p.error("torchattacks 3.5.1 is needed for the comparison (make install puts it in .venv)")
    rows = eval_timing(args.device, quick=args.quick, repeats=args.repeats, batch_size=args.batch_size)
    if args.resnet or args.resnet_size:
        size = args.resnet_size or ((32, 5, 50) if args.quick else (512, 100, 5000))
        rows += resnet_rows(args.device, size, args.batch_size, args.repeats)
    profile = eval_profile(args.device, quick=args.quick, batch_size=args.batch_size)
    meta = run_meta(args.device, eps=EVAL_EPS, norm="linf", repeats=args.repeats, quick=args.quick,
                    batch_size=args.batch_size)
    text = (f"# Worst-case evaluation, L-inf eps={EVAL_EPS}: advx vs torchattacks ({meta['device_name']}, "
            f"torch {meta['torch']}, {meta['date']}, batch size {args.batch_size})\n\n" + format_eval_table(rows)
            + "\n\nSample-passes: one sample through the model once (forward-backward: with the input gradient). "
            "\"speedup of advx\" is torchattacks' time over advx's; on the early_exit=False rows it is their time "
            "over advx's with early exit, the saving of early exit alone; on the amp / channels_last / compile rows "
            "it is that row's time over default advx's, so under 1x means the option alone made the evaluation faster.\n\n"
            "## Where the time goes (torch.profiler, each attack alone on the clean points)\n\n"
            + format_profile_table(profile) + "\n")
    rows = rows + [{"profile": r} for r in profile]
    print(text)
    write_results(args.out, f"eval-{args.device}-{meta['date']}", meta, rows, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
