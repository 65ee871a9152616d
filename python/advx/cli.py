"""The ``advx`` command: demo, attack, eval, visualize, bench, info.

Every subcommand has ``--help``. Models are ``digits`` (the demo's CNN), a file saved
with ``torch.save(model)`` or TorchScript, or a torchvision model name; images come
from a folder (one sub-folder per class, or flat: the model's own predictions are
then the labels), or default to the digits test set for the digits model."""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# -- shared argument groups ---------------------------------------------------------

def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="digits",
                   help="'digits' (default), a saved model file (torch.save(model) or TorchScript), "
                        "or a torchvision model name such as resnet18 (needs torchvision)")
    g.add_argument("--images", metavar="DIR",
                   help="image folder: one sub-folder per class (labels from folder names) or flat "
                        "(labels = the model's predictions); default for 'digits': its test set")
    g.add_argument("--size", type=int, nargs="+", metavar="N",
                   help="resize images to N (square) or H W; default 224 for torchvision models")
    g.add_argument("--grayscale", action="store_true", help="load images as 1 channel")
    g.add_argument("--mean", type=float, nargs="+", help="per-channel mean the model was trained with "
                   "(wraps it in advx.Normalize; torchvision models get ImageNet's by default)")
    g.add_argument("--std", type=float, nargs="+", help="per-channel std, with --mean")
    g.add_argument("--limit", type=int, help="use at most this many images")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    g.add_argument("--cache-dir", help="where the digits model is cached (default ~/.cache/advx)")


def _device(name):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA device is available")
    return dev


def _load_model(args, device):
    from .models import load_model

    if (args.mean is None) != (args.std is None):
        raise CLIError("--mean and --std must be given together")
    try:
        return load_model(args.model, cache_dir=args.cache_dir, device=device, mean=args.mean, std=args.std)
    except (ValueError, RuntimeError) as e:
        raise CLIError(str(e)) from None


def _load_data(args, model, device):
    """(images, labels, files, labels_known) on device."""
    import torch

    from .data import load_digits, load_image_folder

    if args.images is None:
        if args.model != "digits":
            raise CLIError("--images is required for a model other than 'digits'")
        split = load_digits()
        images, labels, files, known = split.test_images, split.test_labels, None, True
        if args.limit is not None:
            images, labels = images[:args.limit], labels[:args.limit]
    else:
        size = args.size
        if size is not None and len(size) not in (1, 2):
            raise CLIError("--size takes N or H W")
        if size:
            size = size[0] if len(size) == 1 else tuple(size)
        elif args.model == "digits":
            size = 8
        elif not os.path.exists(args.model):
            size = 224  # a torchvision model
        grayscale = args.grayscale or args.model == "digits"
        try:
            images, labels, files, _ = load_image_folder(args.images, size=size, grayscale=grayscale,
                                                         limit=args.limit)
        except ValueError as e:
            raise CLIError(str(e)) from None
        known = labels is not None
    images = images.to(device)
    try:
        with torch.no_grad():
            model(images[:1])
    except RuntimeError as e:
        raise CLIError(f"the model cannot take the images (shape {tuple(images.shape[1:])}): {e}; "
                       "check --size and --grayscale") from None
    if labels is None:
        with torch.no_grad():
            labels = torch.cat([model(images[i:i + args.batch_size]).argmax(1)
                                for i in range(0, len(images), args.batch_size)])
    return images, labels.to(device), files, known


def _add_attack_args(p: argparse.ArgumentParser, *, several_eps: bool):
    from ._validate import NORMS

    g = p.add_argument_group("attack")
    g.add_argument("--norm", choices=NORMS, default="linf")
    g.add_argument("--eps", type=float, nargs="+" if several_eps else None,
                   help="budget in pixel space [0, 1] (default 8/255 for linf, 0.5 for l2)"
                        + ("; several values give one row each" if several_eps else ""))
    g.add_argument("--steps", type=int, default=10, help="PGD iterations (default 10)")
    g.add_argument("--alpha", type=float, help="PGD step size (default 2.5 * eps / steps)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random start")
    return g


def _default_eps(args):
    return args.eps if args.eps is not None else (8 / 255 if args.norm == "linf" else 0.5)


# -- subcommands ---------------------------------------------------------------------

def cmd_info(args) -> int:
    import torch

    import advx

    info = {"advx": advx.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "build": advx.build_info(), "cpu_threads": torch.get_num_threads(),
            "cuda_available": torch.cuda.is_available(),
            "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "optional": {}}
    for mod in ("torchvision", "torchattacks", "sklearn", "matplotlib", "tqdm"):
        try:
            info["optional"][mod] = getattr(__import__(mod), "__version__", "installed")
        except ImportError:
            info["optional"][mod] = None
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"advx {info['advx']} (python {info['python']}, torch {info['torch']})")
    print("build: " + ", ".join(f"{k}={v}" for k, v in info["build"].items()))
    print(f"cpu: {platform.machine()}, {info['cpu_threads']} torch threads")
    if info["cuda_devices"]:
        print("cuda: " + ", ".join(info["cuda_devices"]))
    else:
        print("cuda: not available")
    print("optional: " + ", ".join(f"{k} {v or 'missing'}" for k, v in info["optional"].items()))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, device=_device(args.device), quick=args.quick, cache_dir=args.cache_dir,
             threads=args.threads)
    return 0


def cmd_attack(args) -> int:
    import torch

    from . import attacks, viz

    device = _device(args.device)
    model = _load_model(args, device)
    images, labels, files, known = _load_data(args, model, device)
    eps = _default_eps(args)
    targeted = args.target_class is not None
    if targeted:
        labels = torch.full_like(labels, args.target_class)
    try:
        if args.attack == "fgsm":
            atk = attacks.FGSM(model, eps, targeted=targeted)
        else:
            atk = attacks.PGD(model, eps, alpha=args.alpha, steps=args.steps, norm=args.norm, seed=args.seed,
                              targeted=targeted, optimizer=args.optimizer, lr=args.lr)
    except (TypeError, ValueError, RuntimeError) as e:
        raise CLIError(str(e)) from None
    advs, success, norms, clean_pred, adv_probs = [], [], [], [], []
    for i in range(0, len(images), args.batch_size):
        x, y = images[i:i + args.batch_size], labels[i:i + args.batch_size]
        res = atk.run(x, y)
        with torch.no_grad():
            clean_pred.append(model(x).argmax(1))
            adv_probs.append(model(res.adv).softmax(1))
        advs.append(res.adv)
        success.append(res.success)
        norms.append(res.norm)
    adv, success, norms = torch.cat(advs), torch.cat(success), torch.cat(norms)
    clean_pred, probs = torch.cat(clean_pred), torch.cat(adv_probs)
    summary = {"model": args.model, "attack": atk.name, "norm": atk.norm, "eps": eps, "targeted": targeted,
               "n_images": len(images), "success_rate": float(success.float().mean()),
               "mean_norm": float(norms.mean())}
    if known and not targeted:
        summary["clean_accuracy"] = float((clean_pred == labels).float().mean())
        summary["robust_accuracy"] = float((probs.argmax(1) == labels).float().mean())
    print(json.dumps(summary, indent=2))
    if args.out:
        out = Path(args.out)
        # the folder's layout is kept, so cat/1.png and dog/1.png do not collide
        names = ([Path(f).relative_to(args.images).with_suffix(".png") for f in files] if files
                 else [Path(f"{i:05d}.png") for i in range(len(images))])
        for name, img in zip(names, adv):
            viz.save_image(img, out / "adversarial" / name)
        with torch.no_grad():
            p0 = model(images[:4]).softmax(1).max(1)
        p1 = probs[:4].max(1)
        viz.plot_adversarial(images[:4], adv[:4], p0.indices, p0.values, p1.indices, p1.values,
                             out / "examples.png")
        (out / "attack.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {len(adv)} adversarial images to {out / 'adversarial'}, {out / 'examples.png'}")
    return 0


def _eval_suite(args, model, eps: float) -> list:
    """The attacks of --attacks at one budget, in cascade order."""
    from .eval import make_attack

    try:
        return [make_attack(name, model, eps, args.norm, seed=args.seed, apgd_steps=args.apgd_steps,
                            queries=args.queries, pgd_steps=args.steps, alpha=args.alpha) for name in args.attacks]
    except (TypeError, ValueError, RuntimeError) as e:
        raise CLIError(str(e)) from None


def cmd_eval(args) -> int:
    from . import _distributed

    # under torchrun: one process group (NCCL on GPUs, one per rank; gloo on CPUs), each
    # rank evaluates its shard, rank 0 prints and writes the gathered result
    ranked = _distributed.init_from_env()
    code = _eval_ranked(args, ranked)
    if ranked is not None:  # the group this command created; on an error torchrun stops the others
        _distributed.finish()
    return code


def _eval_ranked(args, ranked) -> int:
    from . import _distributed
    from .eval import evaluate

    rank, _ = _distributed.world()
    device = ranked if ranked is not None and args.device is None else _device(args.device)
    model = _load_model(args, device)
    images, labels, _, known = _load_data(args, model, device)
    evaluations = []
    budgets = args.eps if args.eps is not None else [_default_eps(args)]
    for eps in budgets:
        suite = _eval_suite(args, model, eps)
        checkpoint = args.checkpoint
        if checkpoint is not None and len(budgets) > 1:  # one file per budget
            checkpoint = f"{checkpoint}.eps{eps:g}"
        evaluations.append(evaluate(model, (images, labels), eps, args.norm, suite, batch_size=args.batch_size,
                                    seed=args.seed, device=device, progress=sys.stderr.isatty(),
                                    checkpoint=checkpoint, early_exit=args.early_exit, amp=args.amp,
                                    compile=args.compile, channels_last=args.channels_last))
    if rank != 0:
        return 0
    if not known:
        print("(no class folders: labels are the model's own predictions, so clean accuracy is 1 by construction)")
    for ev in evaluations:
        print(ev)
    if args.json:
        # rows attack by attack (robust accuracy after the cascade up to that attack), then
        # the worst case per budget; the full evaluations with their per-sample lists
        rows = [{"name": name, "norm": ev.norm, "eps": ev.eps, "robust_accuracy": ev.after_attack[j]}
                for j, name in enumerate(evaluations[0].attacks) for ev in evaluations]
        rows += [{"name": "worst case", "norm": ev.norm, "eps": ev.eps, "robust_accuracy": ev.robust_accuracy}
                 for ev in evaluations]
        report = {"n_samples": int(evaluations[0].clean.numel()), "clean_accuracy": evaluations[0].clean_accuracy,
                  "attacks": rows, "evaluations": [ev.to_dict() for ev in evaluations]}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def cmd_visualize(args) -> int:
    from . import viz

    device = _device(args.device)
    model = _load_model(args, device)
    if args.shape is not None:
        if len(args.shape) != 3:
            raise CLIError(f"--shape takes C H W, got {len(args.shape)} numbers")
        shape = (1,) + tuple(args.shape)
    elif args.model == "digits":
        shape = (1, 1, 8, 8)
    else:
        shape = (1, 3, 224, 224)
    if args.layer is None and args.targets is None:
        targets = list(range(10))
    else:
        targets = args.targets if args.targets is not None else [0]
    try:
        v = viz.maximize_response(model, targets, steps=args.steps, lr=args.lr, prior_weight=args.prior_weight,
                                  shape=shape, layer=args.layer, unit=args.unit, device=device,
                                  seed=args.seed)
    except (TypeError, ValueError) as e:
        raise CLIError(str(e)) from None
    out = Path(args.out)
    what = f"{args.layer} channel" if args.layer else "class"
    titles = [f"{what} {t}" for t in targets]
    viz.plot_grid(v.rendered.cpu(), titles, out / "visualizations.png",
                  title=f"{args.model}: maximize {what} responses (prior weight {args.prior_weight})")
    for t, img in zip(targets, v.rendered):
        viz.save_image(img, out / f"{what.replace(' ', '_').replace('.', '_')}_{t}.png")
    for t, r in zip(targets, v.response.tolist()):
        print(f"{what} {t}: response {r:.3f}")
    print(f"wrote {out / 'visualizations.png'} and {len(targets)} images")
    return 0


def cmd_bench(args) -> int:
    import torch

    from .bench import attack_timing, format_table, quick_timing

    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    if args.eval:
        from .bench import eval_timing, format_eval_table

        print(f"advx.eval.evaluate vs torchattacks' cascade (when installed) on {device} "
              f"({torch.get_num_threads()} threads):")
        print(format_eval_table(eval_timing(device, quick=args.quick)))
        return 0
    if args.attacks:
        print(f"advx attacks vs the same loop with advx.reference on {device} "
              f"({torch.get_num_threads()} threads), float32 medians:")
        print(format_table(attack_timing(device, quick=args.quick)))
        return 0
    print(f"advx.ops vs advx.reference on {device} ({torch.get_num_threads()} threads), float32 medians:")
    print(format_table(quick_timing(device, quick=args.quick)))
    return 0


# -- parser ----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="advx", description="Fast adversarial attacks, robustness evaluation and feature visualization.",
        epilog="Run 'advx <command> --help' for the options of a command.")
    from . import __version__
    from .attacks import OPTIMIZERS

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)

    p = sub.add_parser("demo", help="train, attack, evaluate and visualize a digits CNN; write a report",
                       description="Everything advx does, on scikit-learn's digits, in a few minutes on a CPU: "
                                   "writes OUT/report.md, OUT/results.json and PNG figures.")
    p.add_argument("--out", default="advx-demo", help="output directory (default advx-demo)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="smaller settings, for tests (well under a minute)")
    p.add_argument("--cache-dir", help="where the trained model is cached (default ~/.cache/advx)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (default 1: the digits network is too small to gain from more)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("attack", help="attack images and save the adversarial ones",
                       description="Run FGSM or PGD on a model and images; print success rate and "
                                   "perturbation size, and with --out save the adversarial images and a figure.")
    _add_model_args(p)
    g = _add_attack_args(p, several_eps=False)
    g.add_argument("--attack", choices=["pgd", "fgsm"], default="pgd")
    g.add_argument("--optimizer", default="sign", choices=OPTIMIZERS,
                   help="PGD update: sign/normalized-gradient step (default) or an advx.optim optimizer")
    g.add_argument("--lr", type=float, help="learning rate of --optimizer (default alpha)")
    g.add_argument("--target-class", type=int, help="targeted attack towards this class")
    p.add_argument("--out", help="directory for adversarial/*.png, examples.png and attack.json")
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("eval", help="clean and worst-case robust accuracy of a model",
                       description="Clean accuracy and robust accuracy as the worst case over a cascade of "
                                   "attacks (each on the samples still robust), at one or several budgets.")
    _add_model_args(p)
    _add_attack_args(p, several_eps=True)
    from .eval import DEFAULT_EVAL_ATTACKS, EVAL_ATTACKS

    p.add_argument("--attacks", nargs="+", choices=EVAL_ATTACKS, default=list(DEFAULT_EVAL_ATTACKS),
                   help="the cascade, in order (default: %(default)s)")
    p.add_argument("--apgd-steps", type=int, default=100, help="iterations of the APGD attacks (default 100)")
    p.add_argument("--queries", type=int, default=5000, help="queries of Square (default 5000)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="write the per-sample results there as they come; a rerun with the same arguments "
                        "resumes after the last finished chunk (several --eps: FILE.eps<value> each)")
    p.add_argument("--no-early-exit", dest="early_exit", action="store_false",
                   help="keep fooled samples in the working batch until their iterations end (the same result "
                        "with more model passes: to measure what early exit saves)")
    p.add_argument("--amp", choices=["bf16", "fp16"],
                   help="run the model under autocast in this dtype (the perturbation stays float32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (eager, with a warning, "
                                                          "when it does not compile)")
    p.add_argument("--channels-last", action="store_true", help="channels-last inputs for a convolutional model")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("visualize", help="images that maximize a class or a unit of a layer",
                       description="Optimize inputs from small noise to maximize class logits (default: "
                                   "classes 0-9) or channels of --layer, minus the edge-energy prior.")
    _add_model_args(p)
    p.add_argument("--targets", type=int, nargs="+", help="classes, or channels of --layer")
    p.add_argument("--layer", help="name of a module (model.named_modules()); unknown names list the valid ones")
    p.add_argument("--unit", type=int, nargs="+", help="one unit (e.g. H W position) of the channel instead of its sum")
    p.add_argument("--shape", type=int, nargs="+", metavar="N",
                   help="input shape C H W (default 1 8 8 for digits, 3 224 224 otherwise)")
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--prior-weight", type=float, default=1.0, help="weight of the edge-energy prior (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="advx-visualize", help="output directory (default advx-visualize)")
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser("bench", help="time the fused ops (or whole attacks) against the references",
                       description="Same-run medians of advx.ops against advx.reference on this machine "
                                   "(--attacks: whole PGD attacks against the same loop with the reference "
                                   "step). The full benchmarks with competitors are benchmarks/*.py in the "
                                   "source tree.")
    p.add_argument("--builtin", action="store_true", help=argparse.SUPPRESS)  # the only timing now; kept for old scripts
    p.add_argument("--attacks", action="store_true", help="time whole attacks instead of single ops")
    p.add_argument("--eval", action="store_true",
                   help="time the worst-case evaluation (APGD-CE, APGD-T, Square) against torchattacks' cascade")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("info", help="versions, build information and devices",
                       description="advx and torch versions, how the extension was built, devices, optional packages.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as e:
        print(f"advx {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
