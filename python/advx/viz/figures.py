"""Figures as PNG files, drawn with matplotlib's object API (no pyplot, so the
caller's backend and open figures are left alone)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

__all__ = ["plot_adversarial", "plot_loss_curves", "plot_grid", "save_image"]


def _figure(**kwargs):
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def _batch(images, name: str) -> torch.Tensor:
    """[N, C, H, W] float in CPU memory from a tensor/array of [H, W], [C, H, W] or [N, C, H, W],
    or a list of [C, H, W] / [H, W] images."""
    if isinstance(images, (list, tuple)):
        images = torch.stack([torch.as_tensor(i).reshape(-1, *torch.as_tensor(i).shape[-2:]) for i in images])
    t = torch.as_tensor(images).detach().float().cpu()
    if t.dim() == 2:
        t = t[None, None]
    elif t.dim() == 3:
        t = t[None]
    if t.dim() != 4 or t.shape[1] not in (1, 3):
        raise ValueError(f"{name} must be images of shape [H, W], [C, H, W] or [N, C, H, W] with C = 1 or 3, "
                         f"got {tuple(t.shape)}")
    return t


def _show(ax, image: torch.Tensor, title: str | None = None) -> None:
    """Draw one [C, H, W] image in [0, 1] (clipped) on ax."""
    arr = image.clamp(0, 1).numpy()
    if arr.shape[0] == 1:
        ax.imshow(arr[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(arr.transpose(1, 2, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def _per_row(value, n: int, name: str) -> list:
    if isinstance(value, torch.Tensor):
        value = value.flatten().tolist()
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries but there are {n} images")
        return list(value)
    return [value] * n


def plot_adversarial(original, adversarial, pred_orig, conf_orig, pred_adv, conf_adv, path, *,
                     magnify: float | None = None, class_names: Sequence[str] | None = None) -> Path:
    """Original / adversarial / magnified difference, one row per image.

    Images are [C, H, W] or a batch [N, C, H, W] in [0, 1]; ``pred_*`` are class
    indices and ``conf_*`` probabilities in [0, 1] (one each, or one per image). The
    difference is shown as ``0.5 + magnify * (adversarial - original)``; by default
    ``magnify`` stretches each row's largest change to the full range.
    """
    orig, adv = _batch(original, "original"), _batch(adversarial, "adversarial")
    if orig.shape != adv.shape:
        raise ValueError(f"adversarial has shape {tuple(adv.shape)} but original has shape {tuple(orig.shape)}")
    if magnify is not None and not magnify > 0:
        raise ValueError(f"magnify must be positive, got {magnify!r}")
    n = orig.shape[0]
    preds = [_per_row(v, n, name) for v, name in ((pred_orig, "pred_orig"), (conf_orig, "conf_orig"),
                                                   (pred_adv, "pred_adv"), (conf_adv, "conf_adv"))]

    def label(c) -> str:
        c = int(c)
        return class_names[c] if class_names is not None else str(c)

    fig = _figure(figsize=(7.5, 2.6 * n))
    axes = fig.subplots(n, 3, squeeze=False)
    for i in range(n):
        diff = adv[i] - orig[i]
        linf = diff.abs().max().item()
        m = magnify if magnify is not None else (0.5 / linf if linf > 0 else 1.0)
        _show(axes[i, 0], orig[i], f"original: {label(preds[0][i])} ({100 * float(preds[1][i]):.1f}%)")
        _show(axes[i, 1], adv[i], f"adversarial: {label(preds[2][i])} ({100 * float(preds[3][i]):.1f}%)")
        _show(axes[i, 2], 0.5 + m * diff,
              f"difference x{m:.3g}\nL2 {diff.norm().item():.3f}, Linf {linf:.3f}")
    return _save(fig, path)


def plot_loss_curves(curves: Mapping[str, Sequence[float]], path, *, title: str | None = None,
                     xlabel: str = "step", ylabel: str = "loss", log_y: bool = False) -> Path:
    """One line per entry of ``curves`` (name -> loss per step), e.g. several optimizers
    on the same attack (the demo's optimizer comparison)."""
    if not curves:
        raise ValueError("curves must name at least one loss curve")
    fig = _figure(figsize=(6, 4))
    ax = fig.subplots()
    styles = ["-", "--", ":", "-."]
    for k, (name, losses) in enumerate(curves.items()):
        values = [float(v) for v in losses]
        if not values:
            raise ValueError(f"curves[{name!r}] is empty")
        ax.plot(range(len(values)), values, styles[k % len(styles)], label=str(name))
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_grid(images, titles: Sequence[str] | None, path, *, ncols: int | None = None,
              title: str | None = None) -> Path:
    """A grid of images (e.g. one class visualization per class) with a title under each."""
    batch = _batch(images, "images")
    n = batch.shape[0]
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles has {len(titles)} entries but there are {n} images")
    ncols = ncols or min(n, 10)
    if ncols < 1:
        raise ValueError(f"ncols must be positive, got {ncols}")
    nrows = math.ceil(n / ncols)
    fig = _figure(figsize=(1.3 * ncols, 1.5 * nrows + (0.4 if title else 0)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k < n:
            _show(ax, batch[k], None if titles is None else str(titles[k]))
        else:
            ax.axis("off")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def save_image(image, path) -> Path:
    """Save a [C, H, W] (or [N, C, H, W], as a grid) image in [0, 1] as a PNG:
    torchvision's save_image when torchvision is installed, else PIL."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = _batch(image, "image")
    try:
        from torchvision.utils import save_image as tv_save_image
    except ImportError:
        tv_save_image = None
    if tv_save_image is not None:
        tv_save_image(batch, os.fspath(path))
        return path
    from PIL import Image

    # one row of images, 2 pixels apart, as a stand-in for torchvision's grid
    n, c, h, w = batch.shape
    canvas = torch.zeros(c, h, n * w + 2 * (n - 1))
    for i in range(n):
        canvas[:, :, i * (w + 2):i * (w + 2) + w] = batch[i]
    arr = (canvas.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    Image.fromarray(arr[0] if c == 1 else arr.transpose(1, 2, 0)).save(path, format="PNG")
    return path
