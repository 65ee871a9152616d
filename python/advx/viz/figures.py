"""Figures as PNG files, drawn with matplotlib's object API (no pyplot, so the
caller's backend and open figures are left alone)."""
from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

__all__ = ["plot_adversarial", "pick_examples", "examples_title", "plot_loss_curves", "plot_grid", "save_image"]


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


# Titles are drawn at this size; one character is about 0.6 em wide, which gives
# how many characters fit over a column of a given width.
TITLE_FONTSIZE = 9
_CHAR_INCHES = 0.6 * TITLE_FONTSIZE / 72


def _show(ax, image: torch.Tensor, title: str | None = None) -> None:
    """Draw one [C, H, W] image in [0, 1] (clipped: callers say so in the figure, see
    _clipped_note) on ax."""
    arr = image.clamp(0, 1).numpy()
    if arr.shape[0] == 1:
        ax.imshow(arr[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(arr.transpose(1, 2, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=TITLE_FONTSIZE)


def _wrap(text: str, width_inches: float) -> str:
    """text wrapped (line by line) to the characters that fit in width_inches, so
    neighbouring titles do not run into each other."""
    chars = max(8, int(width_inches / _CHAR_INCHES))
    return "\n".join(textwrap.fill(line, chars) if line else line for line in str(text).split("\n"))


def _outside_unit(*batches: torch.Tensor) -> int:
    """Pixels (positions, any channel) outside [0, 1] in the batches: _show clips them."""
    return sum(int(((b < 0) | (b > 1)).any(dim=1).sum()) for b in batches)


def _clipped_note(*batches: torch.Tensor) -> list[str]:
    n = _outside_unit(*batches)
    return [f"values outside [0, 1] clipped for display: {n} pixel{'s' if n != 1 else ''}"] if n else []


def _headline(fig, lines: Sequence[str]) -> None:
    """The figure's title and notes, one per line, above the panels."""
    lines = [line for line in lines if line]
    if lines:
        fig.suptitle("\n".join(lines), fontsize=10)


def _per_row(value, n: int, name: str) -> list:
    if isinstance(value, torch.Tensor):
        value = value.flatten().tolist()
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries but there are {n} images")
        return list(value)
    return [value] * n


def _magnification(diff: torch.Tensor, magnify: float | None) -> float:
    """One magnification for every row, so equal greys mean equal changes across the
    figure: by default the largest change of all rows is drawn as black or white."""
    if magnify is not None:
        return float(magnify)
    linf = diff.abs().max().item() if diff.numel() else 0.0
    return 0.5 / linf if linf > 0 else 1.0


def _class_label(class_names: Sequence[str] | None):
    def label(c) -> str:
        c = int(c)
        if class_names is not None and 0 <= c < len(class_names):
            return str(class_names[c])
        return str(c)
    return label


def _difference_colorbar(fig, axes, m: float, channels: int) -> None:
    """A grey scale beside the difference column in pixel units: what black, mid-grey
    and white mean, since the greys are magnified."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    lim = 0.5 / m
    # pad is a fraction of the whole column's height: a fixed fraction would leave a
    # wider gap the more rows there are
    bar = fig.colorbar(ScalarMappable(Normalize(-lim, lim), cmap="gray"), ax=axes, location="bottom",
                       shrink=0.9, aspect=25, pad=0.03 / len(axes))
    bar.set_ticks([-lim, 0.0, lim], labels=[f"-{lim:.3g}", "0 (no change)", f"+{lim:.3g}"])
    per_channel = " (per channel)" if channels > 1 else ""
    bar.set_label(f"adversarial - original{per_channel}, drawn x{m:.3g}", fontsize=TITLE_FONTSIZE)


def _adversarial_figure(original, adversarial, pred_orig, conf_orig, pred_adv, conf_adv, *,
                        true_labels=None, magnify: float | None = None,
                        class_names: Sequence[str] | None = None, title: str | None = None):
    """The matplotlib Figure that plot_adversarial saves (tests read its panels)."""
    orig, adv = _batch(original, "original"), _batch(adversarial, "adversarial")
    if orig.shape != adv.shape:
        raise ValueError(f"adversarial has shape {tuple(adv.shape)} but original has shape {tuple(orig.shape)}")
    if magnify is not None and not magnify > 0:
        raise ValueError(f"magnify must be positive, got {magnify!r}")
    n = orig.shape[0]
    p0, c0, p1, c1 = [_per_row(v, n, name) for v, name in ((pred_orig, "pred_orig"), (conf_orig, "conf_orig"),
                                                            (pred_adv, "pred_adv"), (conf_adv, "conf_adv"))]
    truth = None if true_labels is None else _per_row(true_labels, n, "true_labels")
    label = _class_label(class_names)
    diff = adv - orig
    m = _magnification(diff, magnify)

    width = 7.5
    fig = _figure(figsize=(width, 2.6 * n + 0.6))
    axes = fig.subplots(n, 3, squeeze=False)
    col = width / 3
    for i in range(n):
        known = "" if truth is None else f"true: {label(truth[i])}, "
        _show(axes[i, 0], orig[i], _wrap(f"original\n{known}predicted: {label(p0[i])} "
                                         f"({100 * float(c0[i]):.1f}%)", col))
        _show(axes[i, 1], adv[i], _wrap(f"adversarial\npredicted: {label(p1[i])} ({100 * float(c1[i]):.1f}%)", col))
        _show(axes[i, 2], 0.5 + m * diff[i], _wrap(f"difference\nL2 {diff[i].norm().item():.3f}, "
                                                   f"Linf {diff[i].abs().max().item():.3f}", col))
        axes[i, 2].set_gid("difference")
    _difference_colorbar(fig, axes[:, 2], m, orig.shape[1])
    _headline(fig, [title] + _clipped_note(orig, adv))
    return fig


def plot_adversarial(original, adversarial, pred_orig, conf_orig, pred_adv, conf_adv, path, *,
                     true_labels=None, magnify: float | None = None, class_names: Sequence[str] | None = None,
                     title: str | None = None) -> Path:
    """Original / adversarial / magnified difference, one row per image.

    Images are [C, H, W] or a batch [N, C, H, W] in [0, 1]; ``pred_*`` are the model's
    predicted class indices and ``conf_*`` their probabilities in [0, 1] (one each, or
    one per image); ``true_labels`` (optional, one per image) are the correct classes.
    ``class_names[i]`` names class i. The difference is drawn as
    ``0.5 + magnify * (adversarial - original)`` (mid-grey: no change) with one
    ``magnify`` for the whole figure, by default the one that draws the largest change
    of all rows as black or white; a scale under the column gives the change in pixel
    units. ``title`` goes above the panels, with a note when pixels outside [0, 1] had
    to be clipped for display.
    """
    fig = _adversarial_figure(original, adversarial, pred_orig, conf_orig, pred_adv, conf_adv,
                              true_labels=true_labels, magnify=magnify, class_names=class_names, title=title)
    return _save(fig, path)


def pick_examples(success, n: int = 4) -> torch.Tensor:
    """Indices of ``n`` examples to show: the successful attacks first, then the failed
    ones, each in their original order (so the figure shows what the attack did when it
    did anything)."""
    success = torch.as_tensor(success).detach().cpu().flatten().bool()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    order = torch.cat([success.nonzero().flatten(), (~success).nonzero().flatten()])
    return order[:n]


def examples_title(success, picked) -> str:
    """What a figure of ``picked`` (from pick_examples) shows, e.g. "57 of 100 attacks
    succeeded: 4 successes shown first"."""
    success = torch.as_tensor(success).detach().cpu().flatten().bool()
    shown = success[torch.as_tensor(picked, dtype=torch.long).cpu()]
    hits, misses = int(shown.sum()), int((~shown).sum())
    parts = ([f"{hits} success{'es' if hits != 1 else ''} shown first"] if hits else []) + \
        ([f"{misses} failure{'s' if misses != 1 else ''}" + ("" if hits else " shown")] if misses else [])
    return f"{int(success.sum())} of {success.numel()} attacks succeeded: " + (", then ".join(parts) or "none shown")


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


def _stretch(image: torch.Tensor, low: float = 1.0, high: float = 99.0) -> torch.Tensor:
    """image with its low-th and high-th percentiles (over all its pixels and channels)
    mapped to 0 and 1, clipped: a visualization's structure spans the full grey range
    whatever its contrast. A flat image has no structure to stretch and stays as it is."""
    lo, hi = torch.quantile(image.flatten().double(), torch.tensor([low, high], dtype=torch.double) / 100).tolist()
    if not hi > lo:
        return image
    return ((image - lo) / (hi - lo)).clamp(0, 1)


def _grid_figure(images, titles: Sequence[str] | None, *, ncols: int | None = None, title: str | None = None,
                 stretch: bool = True, row_labels: Sequence[str] | None = None):
    """The matplotlib Figure that plot_grid saves (tests read its panels)."""
    batch = _batch(images, "images")
    n = batch.shape[0]
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles has {len(titles)} entries but there are {n} images")
    ncols = ncols or min(n, 10)
    if ncols < 1:
        raise ValueError(f"ncols must be positive, got {ncols}")
    nrows = math.ceil(n / ncols)
    if row_labels is not None and len(row_labels) != nrows:
        raise ValueError(f"row_labels has {len(row_labels)} entries but the grid has {nrows} rows")
    col = 1.3
    wrapped = [None] * n if titles is None else [_wrap(t, col) for t in titles]
    # rows grow with the longest wrapped title instead of titles running into the next row
    title_lines = max((t.count("\n") + 1 for t in wrapped if t), default=0)
    notes = [title] + (["contrast stretched per image (1st-99th percentile to black-white)"] if stretch
                       else _clipped_note(batch))
    fig = _figure(figsize=(col * ncols + (0.3 if row_labels else 0),
                           (1.2 + 0.16 * title_lines) * nrows + 0.2 * sum(1 for t in notes if t)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k < n:
            _show(ax, _stretch(batch[k]) if stretch else batch[k], wrapped[k])
        else:
            ax.axis("off")
    for r, label in enumerate(row_labels or []):
        axes[r, 0].set_ylabel(_wrap(label, 1.2), fontsize=10)
    _headline(fig, notes)
    return fig


def plot_grid(images, titles: Sequence[str] | None, path, *, ncols: int | None = None,
              title: str | None = None, stretch: bool = True, row_labels: Sequence[str] | None = None) -> Path:
    """A grid of images (e.g. one class visualization per class) with a title over each.

    ``stretch`` (on by default, for visualizations) maps each image's 1st and 99th
    percentiles to black and white, and the figure says so; ``stretch=False`` draws the
    images as they are (values in [0, 1]). ``row_labels`` (one per row) are written at
    the left of the rows. Titles are wrapped to the column width.
    """
    return _save(_grid_figure(images, titles, ncols=ncols, title=title, stretch=stretch, row_labels=row_labels),
                 path)


def save_image(image, path) -> Path:
    """Save a [C, H, W] (or [N, C, H, W], as a grid) image in [0, 1] as a PNG:
    torchvision's save_image when torchvision is installed, else PIL."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = _batch(image, "image")
    try:
        from torchvision.utils import save_image as tv_save_image
    except Exception:  # noqa: BLE001  (missing, or a build for another torch that fails at import)
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
