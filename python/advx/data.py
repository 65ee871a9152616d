"""Data the demo and the CLI need: scikit-learn's bundled digits (no download) and
folders of images (PIL) for users with their own data."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["DigitsSplit", "load_digits", "digits_datasets", "load_image_folder", "folder_labels", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class DigitsSplit:
    """The digits images as float32 [N, 1, 8, 8] in [0, 1] and int64 labels."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_digits(*, test_fraction: float = 0.25, seed: int = 0) -> DigitsSplit:
    """scikit-learn's 1797 handwritten 8x8 digits, split into train and test sets.

    The split is stratified and fixed by ``seed``, so every run (and the cached
    model) sees the same test set. Pixel values 0..16 are scaled to [0, 1].
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels)
    return DigitsSplit(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (x_tr, y_tr, x_te, y_te)))


def digits_datasets(**kwargs) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) TensorDatasets of :func:`load_digits`."""
    s = load_digits(**kwargs)
    return TensorDataset(s.train_images, s.train_labels), TensorDataset(s.test_images, s.test_labels)


def _key(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


def folder_labels(folders: list[str], class_names=None) -> tuple[list[int], str]:
    """The label of each class folder and the rule that gave it.

    Folders named by class index ("0", "207", ...) keep that index ("numbers"), so a
    folder of ImageNet images can carry the model's own class numbers; folders named
    after the model's classes (``class_names``; case, '_' and '-' ignored) get those
    classes' indices ("class names"); otherwise the sorted folder names are numbered
    0..K-1, the torchvision ImageFolder rule ("sorted"), which only means something
    for a model trained on these folders.
    """
    if all(n.isdigit() for n in folders):
        return [int(n) for n in folders], "numbers"
    if class_names:
        index: dict[str, int] = {}
        for i, c in enumerate(class_names):
            index.setdefault(_key(str(c)), i)  # ImageNet names 'crane' twice: the first wins
        if all(_key(n) in index for n in folders):
            return [index[_key(n)] for n in folders], "class names"
    return list(range(len(folders))), "sorted"


def load_image_folder(path, *, size=None, grayscale: bool = False, limit: int | None = None, class_names=None):
    """Images under ``path`` as a float32 [N, C, H, W] tensor in [0, 1].

    Returns ``(images, labels, files, class_names)``. With one sub-folder per class
    the labels come from the folder names (:func:`folder_labels`: class indices, the
    model's ``class_names``, or the sorted order); with a flat folder ``labels`` is None
    (callers then attack the model's own predictions). ``size`` (int or (H, W))
    resizes every image; without it all images must share one size.
    """
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"images: {str(path)!r} is not a directory")
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir())
    entries: list[tuple[Path, str | None]] = []
    if subdirs:
        for name in subdirs:
            entries += [(f, name) for f in sorted((root / name).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    else:
        entries = [(f, None) for f in sorted(root.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if limit is not None:
        entries = entries[:limit]
    if not entries:
        raise ValueError(f"images: no image files ({', '.join(IMAGE_SUFFIXES)}) found under {str(path)!r}")
    if isinstance(size, int):
        size = (size, size)

    arrays = []
    for file, _ in entries:
        with Image.open(file) as im:
            im = im.convert("L" if grayscale else "RGB")
            if size is not None:
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        if arrays and arr.shape != arrays[0].shape:
            raise ValueError(
                f"images: {file} is {arr.shape[1]}x{arr.shape[2]} but {entries[0][0]} is "
                f"{arrays[0].shape[1]}x{arrays[0].shape[2]}; pass a size to resize them all")
        arrays.append(arr)
    images = torch.from_numpy(np.stack(arrays))
    files = [os.fspath(f) for f, _ in entries]
    if not subdirs:
        return images, None, files, None
    by_folder = dict(zip(subdirs, folder_labels(subdirs, class_names)[0]))
    labels = torch.tensor([by_folder[name] for _, name in entries], dtype=torch.int64)
    return images, labels, files, subdirs
