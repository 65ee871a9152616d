"""A small CNN for the 8x8 digits (trained in seconds, cached), and loading of the
models users bring to the CLI: a saved file, TorchScript, or a torchvision name."""
from __future__ import annotations

import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

__all__ = ["DigitsCNN", "default_cache_dir", "digits_cnn_path", "train_digits_cnn", "digits_accuracy", "load_model",
           "class_names", "WEIGHTS"]

# What ``load_model(..., weights=)`` takes besides a path to a state_dict file.
WEIGHTS = ("default", "none")

# Bump when the architecture or the training recipe changes: old cache files are then ignored.
_DIGITS_VERSION = 2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DigitsCNN(nn.Module):
    """[B, 1, 8, 8] pixels in [0, 1] -> [B, 10] logits.

    Named stages (``features.conv1`` ...) so that feature visualization can pick a layer.
    """

    def __init__(self, width: int = 16):
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv1", nn.Conv2d(1, width, 3, padding=1))
        self.features.add_module("relu1", nn.ReLU())
        self.features.add_module("conv2", nn.Conv2d(width, 2 * width, 3, padding=1))
        self.features.add_module("relu2", nn.ReLU())
        self.features.add_module("pool", nn.MaxPool2d(2))
        self.classifier = nn.Sequential()
        self.classifier.add_module("flatten", nn.Flatten())
        self.classifier.add_module("fc1", nn.Linear(2 * width * 16, 128))
        self.classifier.add_module("relu", nn.ReLU())
        self.classifier.add_module("fc2", nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def default_cache_dir() -> Path:
    """$ADVX_CACHE_DIR, else $XDG_CACHE_HOME/advx, else ~/.cache/advx."""
    if os.environ.get("ADVX_CACHE_DIR"):
        return Path(os.environ["ADVX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "advx"


@torch.no_grad()
def digits_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    device = next(model.parameters()).device
    return (model(images.to(device)).argmax(1).cpu() == labels).float().mean().item()


def _fit(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int,
         seed: int, device) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    images, labels = images.to(device), labels.to(device)
    batch = 32
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen).to(device)
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    model.eval()


def _initial_model(seed: int) -> DigitsCNN:
    # A private RNG stream for the initial weights: training never depends on (or
    # disturbs) the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DigitsCNN()


def digits_cnn_path(cache_dir=None, *, epochs: int = 12, seed: int = 0) -> Path:
    """Where :func:`train_digits_cnn` caches the state_dict for these settings."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache / f"digits_cnn-v{_DIGITS_VERSION}-e{epochs}-s{seed}.pt"


def train_digits_cnn(cache_dir=None, *, epochs: int = 12, seed: int = 0, device=None,
                     retrain: bool = False, verbose: bool = False) -> DigitsCNN:
    """The digits CNN in eval mode, trained on :func:`advx.data.load_digits`'s train split.

    The first call trains it (a few seconds on two CPU cores, >= 0.95 test accuracy)
    and saves the state_dict under ``cache_dir`` (default :func:`default_cache_dir`);
    later calls load that file. ``retrain=True`` ignores the cache.
    """
    from .data import load_digits

    device = torch.device(device or "cpu")
    path = digits_cnn_path(cache_dir, epochs=epochs, seed=seed)
    cache = path.parent
    if path.exists() and not retrain:
        try:
            model = _initial_model(seed)
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.to(device).eval()
        except Exception as e:  # noqa: BLE001  (a damaged or foreign file, whatever the error: train again)
            if verbose:
                print(f"ignoring the cached model {path}: {e}")

    split = load_digits()
    model = _initial_model(seed).to(device)
    threads = torch.get_num_threads()
    # batches of 32 images of 8x8: more threads only add synchronization (and
    # stall badly when the cores are shared)
    torch.set_num_threads(1)
    try:
        _fit(model, split.train_images, split.train_labels, epochs=epochs, seed=seed, device=device)
    finally:
        torch.set_num_threads(threads)
    if verbose:
        acc = digits_accuracy(model, split.test_images, split.test_labels)
        print(f"trained the digits CNN: test accuracy {acc:.3f}, saved to {path}")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        # Write then rename: a concurrent reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=cache, suffix=".tmp")
        os.close(fd)
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
        os.replace(tmp, path)
    except OSError as e:  # a read-only cache costs a retraining next time, nothing more
        warnings.warn(f"could not cache the digits CNN in {cache}: {e}", stacklevel=2)
    return model.eval()


def load_model(spec: str, *, cache_dir=None, device=None, mean=None, std=None, weights: str = "default") -> nn.Module:
    """A model for the CLI, in eval mode, taking [0, 1] pixels.

    ``spec`` is ``"digits"`` (the cached digits CNN), a file saved with
    ``torch.save(model)`` or ``torch.jit.save`` (only load files you trust: a pickled
    module runs code), or a torchvision model name (e.g. ``resnet18``, with ImageNet
    normalization). ``weights`` applies to 'digits' and torchvision names:
    ``"default"`` (the trained digits CNN; torchvision's pretrained weights, which
    torchvision downloads on first use into its cache), ``"none"`` (random
    initialization, nothing downloaded) or the path of a ``state_dict`` file.
    ``mean``/``std`` wrap the model in ``advx.Normalize`` for a model trained on
    normalized inputs.
    """
    device = torch.device(device or "cpu")
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"weights must be 'default', 'none' or a file path, got {weights!r}")
    weights = os.fspath(weights)
    if weights not in WEIGHTS and not os.path.isfile(weights):
        raise ValueError(f"weights: {weights!r} is neither 'default', 'none' nor an existing file")
    if spec == "digits":
        model = train_digits_cnn(cache_dir, device=device) if weights == "default" else _initial_model(0)
    elif os.path.exists(spec):
        if weights != "default":
            raise ValueError(f"weights: {spec!r} is a saved model with its own weights; weights= applies to "
                             "'digits' and torchvision model names")
        model = _load_file(spec, device)
    else:
        model = _load_torchvision(spec, weights)
        if mean is None and std is None:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
    if weights not in WEIGHTS:
        _load_state_dict(model, weights)
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise ValueError("mean and std must be given together")
        from .nn import Normalize

        model = Normalize(model, mean, std)
    return model.to(device).eval()


def class_names(spec: str, model: nn.Module | None = None) -> list[str] | None:
    """The names of the classes of the model ``spec`` names, where it says them: the
    digits for 'digits', the categories of a torchvision model's weights (read from
    torchvision's tables, nothing downloaded), or a ``class_names`` / ``classes`` list
    of strings on a loaded module; else None."""
    if spec == "digits":
        return [str(d) for d in range(10)]
    if model is not None:
        inner = getattr(model, "model", None)  # through advx.Normalize
        for m in (model, inner):
            for attr in ("class_names", "classes"):
                names = getattr(m, attr, None)
                if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
                    return list(names)
    if os.path.exists(spec):
        return None
    try:
        torchvision = _import_torchvision(spec)
        return list(torchvision.models.get_model_weights(spec).DEFAULT.meta["categories"])
    except Exception:  # noqa: BLE001  (no torchvision, an unknown name, weights without categories)
        return None


def _load_state_dict(model: nn.Module, path: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (pickle and zip raise many kinds)
        raise ValueError(f"weights: cannot read {path} as a state_dict: {e}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint
    if not isinstance(state, dict):
        raise ValueError(f"weights: {path} holds a {type(state).__name__}, not a state_dict "
                         "(save one with torch.save(model.state_dict(), path))")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"weights: {path} does not fit the model: {e}") from None


def _is_torchscript(path: str) -> bool:
    # both formats are zip archives; only TorchScript's holds constants.pkl
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _load_file(path: str, device) -> nn.Module:
    if _is_torchscript(path):
        return torch.jit.load(path, map_location=device)
    try:
        obj = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # noqa: BLE001  (pickle raises many kinds)
        raise ValueError(f"model: cannot read {path} as a saved model: {e}") from None
    if not isinstance(obj, nn.Module):
        raise ValueError(
            f"model: {path} holds a {type(obj).__name__}, not a module; save the whole model "
            "with torch.save(model, path) or torch.jit.save(torch.jit.script(model), path)")
    return obj


def _import_torchvision(name: str):
    try:
        import torchvision
    except ImportError:
        raise ValueError(
            f"model: {name!r} is neither 'digits' nor an existing file, and torchvision is not "
            "installed to load it by name (pip install torchvision, the build matching your torch)") from None
    except Exception as e:  # noqa: BLE001  (a torchvision built for another torch fails at import)
        raise ValueError(
            f"model: torchvision is installed but does not import ({type(e).__name__}: {e}); it must be the "
            f"build matching torch {torch.__version__}") from None
    return torchvision


def _load_torchvision(name: str, weights: str = "default") -> nn.Module:
    torchvision = _import_torchvision(name)
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise ValueError(f"model: {name!r} is not a file nor a torchvision model; known names: {', '.join(names)}")
    if weights != "default":
        return torchvision.models.get_model(name, weights=None)
    try:
        return torchvision.models.get_model(name, weights="DEFAULT")
    except Exception as e:  # noqa: BLE001  (URLError offline, HTTPError, a hash mismatch, a full disk)
        reason = str(getattr(e, "reason", None) or e).strip().splitlines()
        raise ValueError(
            f"model: could not download {name}'s pretrained weights ({type(e).__name__}: "
            f"{reason[0] if reason else ''}); offline, pass --weights none (random init) or "
            "--weights PATH (a state_dict file)") from None
