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

from ._runtime import json_ready

__all__ = ["main", "build_parser"]


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (usage text only with --help)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _number(kind, *, low=None, above=None):
    """An argparse type: an int or a finite float, at least ``low`` / above ``above``."""
    import math

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"must be > {above}, got {text}")
        return value

    parse.__name__ = "int" if kind is int else "float"  # what argparse names in its messages
    return parse


_COUNT = _number(int, low=1)
_INDEX = _number(int, low=0)
_POSITIVE = _number(float, above=0)
_NONNEGATIVE = _number(float, low=0)
_FLOAT = _number(float)


# -- shared argument groups ---------------------------------------------------------

def _add_model_args(p: argparse.ArgumentParser, *, images: bool = True) -> None:
    from .models import WEIGHTS

    g = p.add_argument_group("model")
    g.add_argument("--model", default="digits",
                   help="'digits' (default), a saved model file (torch.save(model) or TorchScript), "
                        "or a torchvision model name such as resnet18 (needs torchvision)")
    g.add_argument("--weights", default="default", metavar="|".join(WEIGHTS) + "|PATH",
                   help="'default': the trained digits CNN, or for a torchvision name its pretrained "
                        "weights, which torchvision DOWNLOADS on first use (then cached under ~/.cache/torch); "
                        "'none': random initialization, nothing downloaded; PATH: a state_dict file")
    g.add_argument("--mean", type=_FLOAT, nargs="+", help="per-channel mean the model was trained with "
                   "(wraps it in advx.Normalize; torchvision models get ImageNet's by default)")
    g.add_argument("--std", type=_POSITIVE, nargs="+", help="per-channel std, with --mean")
    g.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    g.add_argument("--cache-dir", help="where the digits model is cached (default ~/.cache/advx)")
    if not images:
        return
    g = p.add_argument_group("images")
    g.add_argument("--images", metavar="DIR",
                   help="image folder: one sub-folder per class, named by class index (e.g. 207/) or by the "
                        "model's class name (e.g. golden_retriever/), else numbered in sorted order; or flat "
                        "(labels = the model's predictions); default for 'digits': its test set")
    g.add_argument("--size", type=_COUNT, nargs="+", metavar="N",
                   help="resize images to N (square) or H W; default 224 for torchvision models")
    g.add_argument("--grayscale", action="store_true", help="load images as 1 channel")
    g.add_argument("--limit", type=_COUNT, help="use at most this many images")
    g.add_argument("--batch-size", type=_COUNT, default=128, help="images per model call (default 128)")


def _device(name):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise CLIError(f"--device: {name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA device is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CLIError(f"--device {name}: there are {torch.cuda.device_count()} CUDA device(s)")
    return dev


def _load_model(args, device):
    from .models import load_model

    if (args.mean is None) != (args.std is None):
        raise CLIError("--mean and --std must be given together")
    if args.mean is not None and len(args.mean) != len(args.std):
        raise CLIError(f"--mean has {len(args.mean)} values but --std has {len(args.std)}")
    try:
        return load_model(args.model, cache_dir=args.cache_dir, device=device, mean=args.mean, std=args.std,
                          weights=args.weights)
    except (ValueError, RuntimeError, OSError) as e:
        raise CLIError(_one_line(e)) from None


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return " ".join(lines[:3]) or type(e).__name__


class _Data:
    """What an attack or an evaluation runs on, and how its labels came about."""

    def __init__(self, images, labels, files, known: bool, rule: str, names, predicted, classes: int):
        self.images, self.labels, self.files, self.known = images, labels, files, known
        self.rule, self.class_names, self.predicted, self.classes = rule, names, predicted, classes

    @property
    def clean_accuracy(self) -> float:
        return int((self.predicted == self.labels).sum()) / len(self.labels)


def _load_data(args, model, device) -> _Data:
    import torch

    from . import models
    from .data import folder_labels, load_digits, load_image_folder

    names = models.class_names(args.model, model)
    rule = "given"
    if args.images is None:
        if args.model != "digits":
            raise CLIError("--images is required for a model other than 'digits'")
        split = load_digits()
        images, labels, files = split.test_images, split.test_labels, None
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
            images, labels, files, folders = load_image_folder(args.images, size=size, grayscale=grayscale,
                                                               limit=args.limit, class_names=names)
        except (ValueError, OSError) as e:
            raise CLIError(_one_line(e)) from None
        if folders:
            rule = folder_labels(folders, names)[1]
    known = labels is not None
    images = images.to(device)
    images, logits = _fitting(model, images)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise CLIError(f"the model must return [batch, classes] logits, got "
                       f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    if names is not None and len(names) != logits.shape[1]:
        names = None  # a model with another head than its weights' table
    with torch.no_grad():
        predicted = torch.cat([model(images[i:i + args.batch_size]).argmax(1)
                               for i in range(0, len(images), args.batch_size)])
    labels = predicted if labels is None else labels.to(device)
    data = _Data(images, labels, files, known, rule, names, predicted, logits.shape[1])
    _check_labels(args, data)
    return data


def _fitting(model, images):
    """(images, logits of the first): as loaded, or, where the model wants the other
    channel count, grey images as 1 channel / 1-channel images repeated to 3 (both
    lossless: a grey PNG loaded as RGB has three equal channels)."""
    import torch

    tries = [images]
    if images.shape[1] == 3 and bool((images[:, 0] == images[:, 1]).all() and (images[:, 1] == images[:, 2]).all()):
        tries.append(images[:, :1])
    elif images.shape[1] == 1:
        tries.append(images.expand(-1, 3, -1, -1))
    first = None
    for candidate in tries:
        try:
            with torch.no_grad():
                return candidate.contiguous(), model(candidate[:1])
        except RuntimeError as e:
            first = first or e
    raise CLIError(f"the model cannot take the images (shape {tuple(images.shape[1:])}): {_one_line(first)}; "
                   "check --size and --grayscale")


def _check_labels(args, data: _Data) -> None:
    """Labels outside the model's classes are an error; labels the model almost never
    agrees with (folders cat/ dog/ numbered 0, 1 against an ImageNet model) a warning."""
    if not data.known:
        return
    classes = data.classes
    top = int(data.labels.max())
    if top >= classes:
        raise CLIError(f"--images: label {top} (from the folder names, {_RULES[data.rule]}) is not a class of "
                       f"the model, which has {classes}")
    acc = data.clean_accuracy
    # a handful of images says little, unless the labels are folder numbers made up here
    if acc <= 1.0 / classes and (len(data.labels) >= 10 or data.rule == "sorted"):
        print(f"advx {args.command}: warning: clean accuracy {acc:.4f}: the labels ({_RULES[data.rule]}) do not "
              f"look like this model's classes; name the class folders by class index (e.g. 207/)"
              + (f" or class name (e.g. {data.class_names[min(207, classes - 1)].replace(' ', '_')}/)"
                 if data.class_names else ""), file=sys.stderr)


_RULES = {"numbers": "folder names as class indices", "class names": "folder names matched to the model's classes",
          "sorted": "sub-folders numbered 0..K-1 in sorted order", "given": "the data set's own labels"}


def _write_json(path, obj) -> None:
    _ready(Path(path)).write_text(json.dumps(json_ready(obj), indent=2) + "\n")


def _add_attack_args(p: argparse.ArgumentParser, *, several_eps: bool, steps_default: str):
    from ._validate import L1_NORMS

    g = p.add_argument_group("attack")
    g.add_argument("--norm", choices=L1_NORMS, default="linf", help="the budget's norm (default linf)")
    g.add_argument("--eps", type=_POSITIVE, nargs="+" if several_eps else None,
                   help="budget in pixel space [0, 1] (default: 8/255 for linf, 0.5 for l2, 12 for l1, the "
                        "standard CIFAR-10 budgets)" + ("; several values give one evaluation each" if several_eps
                                                        else ""))
    g.add_argument("--steps", type=_COUNT, help=f"PGD iterations (default {steps_default})")
    g.add_argument("--alpha", type=_POSITIVE, help="PGD step size (default 2.5 * eps / steps)")
    g.add_argument("--seed", type=_INDEX, help="seed of the attacks' per-sample randomness (default 0)")
    return g


_DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5, "l1": 12.0}


def _default_eps(args):
    return args.eps if args.eps is not None else _DEFAULT_EPS[args.norm]


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
        except Exception as e:  # noqa: BLE001  (e.g. a torchvision built for another torch)
            info["optional"][mod] = f"broken ({type(e).__name__}: {_one_line(e)[:80]})"
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


def _attack_options(args) -> None:
    """Options that mean nothing for the chosen attack are refused, never ignored."""
    if args.attack == "fgsm":
        given = [f"--{o.replace('_', '-')}" for o in ("steps", "alpha", "lr", "seed") if getattr(args, o) is not None]
        given += ["--optimizer"] if args.optimizer != "sign" else []
        if given:
            raise CLIError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to --attack fgsm "
                           "(one step of length eps from the image); use --attack pgd")
    if args.lr is not None and args.optimizer == "sign":
        raise CLIError("--lr is the learning rate of --optimizer sgd|momentum|adagrad|rmsprop|adam; "
                       "the sign step's size is --alpha")


def _batched(fn, *tensors, size: int):
    import torch

    return torch.cat([fn(*(t[i:i + size] for t in tensors)) for i in range(0, len(tensors[0]), size)])


def cmd_attack(args) -> int:
    import torch

    from . import attacks, viz
    from .attacks.base import sample_norms
    from .quantize import quantize, to_uint8

    _attack_options(args)
    device = _device(args.device)
    model = _load_model(args, device)
    data = _load_data(args, model, device)
    images, labels, known, names = data.images, data.labels, data.known, data.class_names
    eps = _default_eps(args)
    targeted = args.target_class is not None
    if targeted:
        if args.target_class >= data.classes:
            raise CLIError(f"--target-class {args.target_class}: the model has {data.classes} classes "
                           f"(0..{data.classes - 1})")
        goal = torch.full_like(labels, args.target_class)
    else:
        goal = labels
    try:
        if args.attack == "fgsm":
            atk = attacks.FGSM(model, eps, norm=args.norm, targeted=targeted)
        else:
            atk = attacks.PGD(model, eps, alpha=args.alpha, steps=args.steps or 10, norm=args.norm,
                              seed=_seed(args), targeted=targeted,
                              optimizer=args.optimizer, lr=args.lr)
    except (TypeError, ValueError, RuntimeError) as e:
        raise CLIError(_one_line(e)) from None
    adv = _batched(lambda x, y: atk.run(x, y).adv, images, goal, size=args.batch_size)
    png = args.out is not None and args.format == "png"

    def outcome(a):
        with torch.no_grad():
            probs = _batched(lambda x: model(x).softmax(1), a, size=args.batch_size)
        pred = probs.argmax(1)
        success = pred == goal if targeted else pred != labels
        norms = sample_norms(a - images, atk.norm)
        return probs, success, {"success_rate": int(success.sum()) / len(a),
                                "mean_norm": float(norms.mean()), "max_norm": float(norms.max()),
                                **({"robust_accuracy": int((pred == labels).sum()) / len(a)}
                                   if known and not targeted else {})}

    probs, success, numbers = outcome(adv)
    raw = numbers
    if png:  # the report describes the files: the 8-bit levels inside the ball
        adv = quantize(adv, images, eps, atk.norm, bounds=atk.bounds)
        probs, success, numbers = outcome(adv)
    summary = {"model": args.model, "attack": atk.name, "norm": atk.norm, "eps": eps, "targeted": targeted,
               **({"target_class": args.target_class} if targeted else {}), "n_images": len(images),
               **({"clean_accuracy": data.clean_accuracy} if known else {}), **numbers}
    if png:
        summary["saved_as"] = "8-bit PNG, each image on the 8-bit grid inside its eps ball"
        summary["before_rounding"] = raw
    summary = json_ready(summary)
    print(json.dumps(summary, indent=2))
    if args.out:
        out = Path(args.out)
        if args.format == "pt":
            # torchattacks' Attack.save layout, so its users' loaders read it
            torch.save({"adv_inputs": adv.cpu(), "labels": labels.cpu(), "preds": probs.argmax(1).cpu(),
                        "clean_inputs": images.cpu(), "save_type": "float", "files": data.files},
                       _ready(out / "adversarial.pt"))
            written = out / "adversarial.pt"
        else:
            # the folder's layout is kept, so cat/1.png and dog/1.png do not collide
            files = ([Path(f).relative_to(args.images).with_suffix(".png") for f in data.files] if data.files
                     else [Path(f"{i:05d}.png") for i in range(len(images))])
            for name, levels in zip(files, to_uint8(adv).cpu()):
                _write_png(levels, out / "adversarial" / name)
            written = out / "adversarial"
        # successes first: the figure should show what the attack did when it did anything
        # an image the model already got wrong is no success of the attack's
        shown = success & (data.predicted == labels) if known and not targeted else success
        pick = viz.pick_examples(shown, 4).to(images.device)
        with torch.no_grad():
            p0 = model(images[pick]).softmax(1).max(1)
        p1 = probs[pick].max(1)
        goal_text = f", target class {_class_text(args.target_class, names)}" if targeted else ""
        viz.plot_adversarial(images[pick], adv[pick], p0.indices, p0.values, p1.indices, p1.values,
                             out / "examples.png", true_labels=labels[pick] if known and not targeted else None,
                             class_names=names,
                             title=f"{atk.name} {atk.norm}, eps {eps:g}{goal_text}\n{viz.examples_title(shown, pick)}")
        _write_json(out / "attack.json", summary)
        print(f"wrote {len(adv)} adversarial images to {written}, {out / 'examples.png'} and {out / 'attack.json'}")
    return 0


def _class_text(k: int, names) -> str:
    return f"{k} ({names[k]})" if names and names[k] != str(k) else str(k)


def _ready(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _write_png(levels, path: Path) -> None:
    """One [C, H, W] uint8 image as a PNG, exactly these levels (no second rounding)."""
    from PIL import Image

    arr = levels.numpy()
    Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(_ready(path), format="PNG")


def _eval_names(args) -> list:
    """--attacks, or the standard cascade for the norm (Square has no L1 version)."""
    from .eval import DEFAULT_EVAL_ATTACKS, L1_EVAL_ATTACKS

    if args.attacks:
        return args.attacks
    return list(L1_EVAL_ATTACKS if args.norm == "l1" else DEFAULT_EVAL_ATTACKS)


def _eval_suite(args, model, eps: float) -> list:
    """The attacks of --attacks at one budget, in cascade order."""
    from .eval import make_attack

    extra = {"pgd_steps": args.steps} if args.steps is not None else {}
    try:
        return [make_attack(name, model, eps, args.norm, seed=_seed(args), apgd_steps=args.apgd_steps,
                            queries=args.queries, alpha=args.alpha, **extra) for name in _eval_names(args)]
    except (TypeError, ValueError, RuntimeError) as e:
        raise CLIError(_one_line(e)) from None


def _seed(args) -> int:
    return 0 if args.seed is None else args.seed


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
    data = _load_data(args, model, device)
    images, labels, known = data.images, data.labels, data.known
    evaluations = []
    budgets = args.eps if args.eps is not None else [_default_eps(args)]
    for eps in budgets:
        suite = _eval_suite(args, model, eps)
        checkpoint = args.checkpoint
        if checkpoint is not None and len(budgets) > 1:  # one file per budget
            checkpoint = f"{checkpoint}.eps{eps:g}"
        try:
            evaluations.append(evaluate(model, (images, labels), eps, args.norm, suite, batch_size=args.batch_size,
                                        seed=_seed(args), device=device, progress=sys.stderr.isatty(),
                                        checkpoint=checkpoint, early_exit=args.early_exit, amp=args.amp,
                                        compile=args.compile, channels_last=args.channels_last))
        except ValueError as e:  # a refused checkpoint, a model that does not fit the data
            raise CLIError(_one_line(e)) from None
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
        _write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


def cmd_visualize(args) -> int:
    from . import models, viz

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
                                  seed=args.seed, progress=sys.stderr.isatty())
    except (TypeError, ValueError, RuntimeError) as e:
        raise CLIError(_one_line(e)) from None
    out = Path(args.out)
    what = f"{args.layer} channel" if args.layer else "class"
    names = None if args.layer else models.class_names(args.model, model)
    titles = [f"{what} {_class_text(t, names)}" for t in targets]
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
    where = f"on {device} ({torch.get_num_threads()} threads), torch {torch.__version__}"
    if args.eval:
        from .bench import eval_timing, format_eval_table

        heading = f"advx.eval.evaluate vs torchattacks' cascade (when installed) {where}:"
        table = format_eval_table(eval_timing(device, quick=args.quick))
    elif args.attacks:
        heading = f"advx attacks vs the same loop with advx.reference {where}, float32 medians:"
        table = format_table(attack_timing(device, quick=args.quick))
    else:
        heading = f"advx.ops vs advx.reference {where}, float32 medians:"
        table = format_table(quick_timing(device, quick=args.quick))
    print(heading)
    print(table)
    if args.out:  # only where the user says: an installed command has no checkout to write into
        _ready(Path(args.out)).write_text(f"{heading}\n\n{table}\n")
        print(f"wrote {args.out}")
    return 0


# -- parser ----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="advx", description="Fast adversarial attacks, robustness evaluation and feature visualization.",
        epilog="Run 'advx <command> --help' for the options of a command.")
    from . import __version__
    from .attacks import OPTIMIZERS

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)

    p = sub.add_parser("demo", help="train, attack, evaluate and visualize a digits CNN; write a report",
                       description="Everything advx does, on scikit-learn's digits: writes OUT/report.md, "
                                   "OUT/results.json and PNG figures. About 15 seconds on two CPU cores (the "
                                   "first run also trains the CNN, a few seconds more, and caches it).")
    p.add_argument("--out", default="advx-demo", help="output directory (default advx-demo)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="smaller settings, for tests (a few seconds)")
    p.add_argument("--cache-dir", help="where the trained model is cached (default ~/.cache/advx)")
    p.add_argument("--threads", type=_COUNT, default=1,
                   help="CPU threads (default 1: the digits network is too small to gain from more)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("attack", help="attack images and save the adversarial ones",
                       description="Run FGSM or PGD on a model and images; print success rate and "
                                   "perturbation size, and with --out save the adversarial images and a figure. "
                                   "Saved PNGs hold each image on the 8-bit grid inside its eps ball, and the "
                                   "printed numbers are those of the saved images.")
    _add_model_args(p)
    g = _add_attack_args(p, several_eps=False, steps_default="10")
    g.add_argument("--attack", choices=["pgd", "fgsm"], default="pgd",
                   help="pgd (default) or fgsm: one step of length eps (sign step in linf, eps * g / ||g|| "
                        "in l2)")
    g.add_argument("--optimizer", default="sign", choices=OPTIMIZERS,
                   help="PGD update: sign/normalized-gradient step (default) or an advx.optim optimizer")
    g.add_argument("--lr", type=_POSITIVE, help="learning rate of --optimizer (default alpha)")
    g.add_argument("--target-class", type=_INDEX, help="targeted attack towards this class")
    p.add_argument("--out", help="directory for the adversarial images, examples.png and attack.json")
    p.add_argument("--format", choices=["png", "pt"], default="png",
                   help="png (default): OUT/adversarial/, the input folder's layout, 8-bit inside the budget; "
                        "pt: OUT/adversarial.pt, float tensors as torchattacks' Attack.save writes them "
                        "(adv_inputs, labels, preds, clean_inputs)")
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("eval", help="clean and worst-case robust accuracy of a model",
                       description="Clean accuracy and robust accuracy as the worst case over a cascade of "
                                   "attacks (each on the samples still robust), at one or several budgets.")
    _add_model_args(p)
    _add_attack_args(p, several_eps=True, steps_default="50, for the pgd attack")
    from .eval import DEFAULT_EVAL_ATTACKS, EVAL_ATTACKS, L1_EVAL_ATTACKS

    p.add_argument("--attacks", nargs="+", choices=EVAL_ATTACKS,
                   help=f"the cascade, in order (default: {' '.join(DEFAULT_EVAL_ATTACKS)}; for l1: "
                        f"{' '.join(L1_EVAL_ATTACKS)})")
    p.add_argument("--apgd-steps", type=_COUNT, default=100, help="iterations of the APGD attacks (default 100)")
    p.add_argument("--queries", type=_COUNT, default=5000, help="queries of Square (default 5000)")
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
    _add_model_args(p, images=False)
    p.add_argument("--targets", type=_INDEX, nargs="+", help="classes, or channels of --layer")
    p.add_argument("--layer", help="name of a module (model.named_modules()); unknown names list the valid ones")
    p.add_argument("--unit", type=_INDEX, nargs="+",
                   help="one unit (e.g. H W position) of the channel instead of its sum")
    p.add_argument("--shape", type=_COUNT, nargs="+", metavar="N",
                   help="input shape C H W (default 1 8 8 for digits, 3 224 224 otherwise)")
    p.add_argument("--steps", type=_COUNT, default=250, help="Adam steps (default 250)")
    p.add_argument("--lr", type=_POSITIVE, default=0.1, help="Adam's learning rate (default 0.1)")
    p.add_argument("--prior-weight", type=_NONNEGATIVE, default=1.0,
                   help="weight of the edge-energy prior (default 1, 0: none)")
    p.add_argument("--seed", type=_INDEX, default=0, help="seed of the starting noise (default 0)")
    p.add_argument("--out", default="advx-visualize", help="output directory (default advx-visualize)")
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser("bench", help="time the fused ops (or whole attacks) against the references",
                       description="Same-run medians of advx.ops against advx.reference on this machine "
                                   "(--attacks: whole PGD attacks against the same loop with the reference "
                                   "step; --eval: the worst-case evaluation against torchattacks). Prints the "
                                   "table; --out also writes it as markdown.")
    p.add_argument("--builtin", action="store_true", help=argparse.SUPPRESS)  # the only timing now; kept for old scripts
    p.add_argument("--attacks", action="store_true", help="time whole attacks instead of single ops")
    p.add_argument("--eval", action="store_true",
                   help="time the worst-case evaluation (APGD-CE, APGD-T, Square) against torchattacks' cascade")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    p.add_argument("--threads", type=_COUNT, help="CPU threads (default: torch's)")
    p.add_argument("--out", metavar="FILE", help="also write the table to FILE (markdown)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("info", help="versions, build information and devices",
                       description="advx and torch versions, how the extension was built, devices, optional packages.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)
    parser.subcommands = dict(sub.choices)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the subcommand, whose --help lists what it takes
        parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except CLIError as e:
        print(f"advx {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be read or written
        print(f"advx {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"advx {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (a bug: one line, and the traceback on request)
        if os.environ.get("ADVX_TRACEBACK"):
            raise
        print(f"advx {args.command}: internal error: {type(e).__name__}: {_one_line(e)} "
              "(set ADVX_TRACEBACK=1 for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
