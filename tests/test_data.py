"""advx.data (digits split, image folders) and advx.models (digits CNN, model loading)."""
import numpy as np
import pytest
import torch
from PIL import Image

import advx
from advx import models
from advx.data import digits_datasets, load_digits, load_image_folder


@pytest.fixture(scope="module")
def split():
    return load_digits()


@pytest.fixture(scope="module")
def digits_model(digits_cache_dir):
    return models.train_digits_cnn(digits_cache_dir)


def test_digits_split_shapes_range_and_balance(split):
    assert split.train_images.shape == (1347, 1, 8, 8) and split.test_images.shape == (450, 1, 8, 8)
    assert split.train_images.dtype == torch.float32 and split.train_labels.dtype == torch.int64
    for images in (split.train_images, split.test_images):
        assert images.min() == 0.0 and images.max() == 1.0
    # stratified: every class in both parts, in about the same proportion
    counts = torch.bincount(split.test_labels, minlength=10)
    assert counts.min() >= 40 and counts.max() <= 50


def test_digits_split_is_fixed_and_seeded(split):
    again = load_digits()
    assert torch.equal(again.test_images, split.test_images) and torch.equal(again.test_labels, split.test_labels)
    other = load_digits(seed=1)
    assert not torch.equal(other.test_labels, split.test_labels)
    train, test = digits_datasets()
    assert len(train) == 1347 and len(test) == 450
    assert torch.equal(test[3][0], split.test_images[3])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_digits_bad_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=fraction)


def test_digits_cnn_trains_to_95_percent(digits_model, split):
    assert not digits_model.training
    assert models.digits_accuracy(digits_model, split.test_images, split.test_labels) >= 0.95


def test_digits_cnn_is_loaded_from_cache(digits_model, digits_cache_dir, monkeypatch):
    assert models.digits_cnn_path(digits_cache_dir).is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("the cached model should have been loaded")

    monkeypatch.setattr(models, "_fit", no_training)
    again = models.train_digits_cnn(digits_cache_dir)
    for (k, v), (k2, v2) in zip(digits_model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_damaged_cache_is_retrained_and_rng_untouched(tmp_path):
    path = models.digits_cnn_path(tmp_path, epochs=1)
    path.write_bytes(b"not a checkpoint")
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    model = models.train_digits_cnn(tmp_path, epochs=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    loaded = models.train_digits_cnn(tmp_path, epochs=1)
    assert torch.equal(model.classifier.fc2.weight, loaded.classifier.fc2.weight)


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ADVX_CACHE_DIR", str(tmp_path / "c"))
    assert models.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ADVX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert models.default_cache_dir() == tmp_path / "advx"


def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_with_class_folders(tmp_path):
    rng = np.random.default_rng(0)
    pixels = {}
    for cls in ("cat", "dog"):
        for i in range(3):
            arr = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
            pixels[(cls, i)] = arr
            _write_png(tmp_path / cls / f"{i}.png", arr)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    images, labels, files, classes = load_image_folder(tmp_path)
    assert classes == ["cat", "dog"]
    assert images.shape == (6, 3, 5, 7) and images.dtype == torch.float32
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert files[4].endswith("dog/1.png")
    assert torch.allclose(images[4], torch.from_numpy(pixels[("dog", 1)]).permute(2, 0, 1).float() / 255)
    gray, *_ = load_image_folder(tmp_path, grayscale=True, size=(4, 6), limit=2)
    assert gray.shape == (2, 1, 4, 6) and 0 <= gray.min() and gray.max() <= 1


def test_image_folder_numbered_classes_and_flat(tmp_path):
    arr = np.full((4, 4), 200, dtype=np.uint8)
    _write_png(tmp_path / "num" / "207" / "a.png", arr)
    _write_png(tmp_path / "num" / "3" / "b.png", arr)
    _, labels, _, _ = load_image_folder(tmp_path / "num")
    assert labels.tolist() == [207, 3]  # folder names are the class indices
    _write_png(tmp_path / "flat" / "a.png", arr)
    images, labels, files, classes = load_image_folder(tmp_path / "flat")
    assert labels is None and classes is None and images.shape == (1, 3, 4, 4)


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_image_folder(tmp_path / "empty")
    _write_png(tmp_path / "mixed" / "a.png", np.zeros((4, 4), np.uint8))
    _write_png(tmp_path / "mixed" / "b.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(ValueError, match="b.png.*size"):
        load_image_folder(tmp_path / "mixed")
    assert load_image_folder(tmp_path / "mixed", size=3)[0].shape == (2, 3, 3, 3)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_load_model_digits_file_and_torchscript(digits_model, digits_cache_dir, tmp_path, split):
    x = split.test_images[:5]
    expected = digits_model(x)
    assert torch.equal(models.load_model("digits", cache_dir=digits_cache_dir)(x), expected)
    torch.save(digits_model, tmp_path / "whole.pt")
    torch.jit.save(torch.jit.script(digits_model), tmp_path / "scripted.pt")
    for name in ("whole.pt", "scripted.pt"):
        loaded = models.load_model(str(tmp_path / name))
        assert not loaded.training
        torch.testing.assert_close(loaded(x), expected)
    torch.save(digits_model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="not a module"):
        models.load_model(str(tmp_path / "weights.pt"))
    wrapped = models.load_model(str(tmp_path / "whole.pt"), mean=[0.5], std=[0.25])
    assert isinstance(wrapped, advx.Normalize)
    torch.testing.assert_close(wrapped(x), digits_model((x - 0.5) / 0.25))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read"):
        models.load_model(str(tmp_path / "junk.pt"))
    with pytest.raises(ValueError, match="together"):
        models.load_model(str(tmp_path / "whole.pt"), mean=[0.5])


def test_load_model_unknown_name():
    try:
        import torchvision  # noqa: F401
        match = "not a file nor a torchvision model"
    except ImportError:
        match = "torchvision is not installed"
    with pytest.raises(ValueError, match=match):
        models.load_model("no_such_model_xyz")
