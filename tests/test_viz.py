"""advx.viz: maximum-response images and the PNG figures."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import advx
from advx import viz
from advx.models import DigitsCNN, train_digits_cnn
from advx.viz import figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits_model(digits_cache_dir):
    return train_digits_cnn(digits_cache_dir)


def tiny_net():
    """A random conv net with batch norm and dropout (so eval mode matters)."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 5))


def start_image(shape, seed=0):
    """The noise maximize_response starts from."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.01


def assert_png(path, min_size=(10, 10)):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]


@pytest.mark.parametrize("prior_weight", [0.0, 1.0])
def test_maximize_response_increases_the_class_logit(digits_model, prior_weight, device):
    model = digits_model.to(device)
    with torch.no_grad():
        before = model(start_image((1, 1, 8, 8)).to(device))[0, 3]
    v = viz.maximize_response(model, 3, shape=(1, 1, 8, 8), steps=40, prior_weight=prior_weight)
    assert v.image.shape == (1, 1, 8, 8) and v.image.device.type == device
    with torch.no_grad():
        after = model(v.image)
    assert after[0, 3] > before + 5.0
    assert after[0].argmax() == 3
    torch.testing.assert_close(v.response, after[:, 3])
    model.cpu()


def test_several_targets_one_image_each(digits_model):
    v = viz.maximize_response(digits_model, [0, 4, 7], shape=(1, 1, 8, 8), steps=40, prior_weight=0)
    assert v.image.shape == (3, 1, 8, 8) and v.rendered.shape == (3, 1, 8, 8)
    with torch.no_grad():
        assert digits_model(v.image).argmax(1).tolist() == [0, 4, 7]
    # the images do not interact: changing one target leaves the other rows as they were
    other = viz.maximize_response(digits_model, [0, 4, 8], shape=(1, 1, 8, 8), steps=40, prior_weight=0)
    torch.testing.assert_close(other.image[:2], v.image[:2])
    assert not torch.allclose(other.image[2], v.image[2])
    with pytest.raises(ValueError, match="shape\\[0\\]"):
        viz.maximize_response(digits_model, [1, 2], shape=(3, 1, 8, 8), steps=1, prior_weight=0)


def test_layer_channel_and_unit(digits_model, device):
    model = digits_model.to(device)
    acts = {}
    hook = model.features.conv2.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    try:
        with torch.no_grad():
            model(start_image((2, 1, 8, 8)).to(device))
        start_sum, start_unit = acts["a"][:, 5].sum((1, 2)), acts["a"][:, 5, 2, 3]
        v = viz.maximize_response(model, 5, layer="features.conv2", shape=(2, 1, 8, 8), steps=30, prior_weight=0)
        with torch.no_grad():
            model(v.image)
        torch.testing.assert_close(v.response, acts["a"][:, 5].sum((1, 2)))
        assert bool((v.response > start_sum + 1.0).all())
        u = viz.maximize_response(model, 5, layer="features.conv2", unit=(2, 3), shape=(2, 1, 8, 8), steps=30,
                                  prior_weight=0)
        with torch.no_grad():
            model(u.image)
        torch.testing.assert_close(u.response, acts["a"][:, 5, 2, 3])
        assert bool((u.response > start_unit + 1.0).all())
    finally:
        hook.remove()
        model.cpu()


def test_unknown_layer_lists_the_valid_names(digits_model):
    with pytest.raises(ValueError) as err:
        viz.maximize_response(digits_model, 0, layer="features.conv9", shape=(1, 1, 8, 8), prior_weight=0)
    message = str(err.value)
    assert "features.conv9" in message
    for name in ("features.conv1", "features.conv2", "classifier.fc1", "classifier.fc2"):
        assert name in message
    assert viz.layer_names(digits_model)[:2] == ["features", "features.conv1"]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(target=10), ValueError, "target 10 is out of range"),
    (dict(target=-1), ValueError, "out of range"),
    (dict(target=2.5), TypeError, "target must be an int"),
    (dict(target=[]), TypeError, "target must be"),
    (dict(target=1, layer="features.conv1", unit=(9, 0)), ValueError, "unit"),
    (dict(target=1, layer="features.conv1", unit="a"), TypeError, "unit"),
    (dict(target=1, steps=0), ValueError, "steps"),
    (dict(target=1, lr=0.0), ValueError, "lr"),
    (dict(target=1, prior_weight=-1.0), ValueError, "prior_weight"),
    (dict(target=1, shape=(8, 8, 0)), ValueError, "shape"),
])
def test_bad_arguments_name_themselves(digits_model, kwargs, error, match):
    kwargs = dict(dict(shape=(1, 1, 8, 8), steps=1, prior_weight=0.0), **kwargs)
    target = kwargs.pop("target")
    with pytest.raises(error, match=match):
        viz.maximize_response(digits_model, target, **kwargs)
    with pytest.raises(TypeError, match="model"):
        viz.maximize_response(lambda x: x, 0, shape=(1, 1, 8, 8), prior_weight=0)


def test_model_state_and_parameters_untouched():
    net = tiny_net()
    net.train()
    net[3].eval()  # a mixed state must come back as it was
    params = {k: v.clone() for k, v in net.state_dict().items()}
    v = viz.maximize_response(net, 2, shape=(2, 3, 9, 11), steps=5, prior_weight=0)
    assert v.image.shape == (2, 3, 9, 11)
    assert net.training and net[1].training and not net[3].training
    assert all(p.grad is None and p.requires_grad for p in net.parameters())
    for k, t in net.state_dict().items():  # batch-norm running stats included
        assert torch.equal(t, params[k]), k


def test_deterministic_for_a_seed():
    net = tiny_net()
    a = viz.maximize_response(net, 1, shape=(1, 3, 8, 8), steps=5, prior_weight=0, seed=3)
    b = viz.maximize_response(net, 1, shape=(1, 3, 8, 8), steps=5, prior_weight=0, seed=3)
    c = viz.maximize_response(net, 1, shape=(1, 3, 8, 8), steps=5, prior_weight=0, seed=4)
    assert torch.equal(a.image, b.image) and not torch.equal(a.image, c.image)


def test_the_prior_is_subtracted():
    net = tiny_net()
    free = viz.maximize_response(net, 0, shape=(1, 3, 8, 8), steps=30, prior_weight=0)
    calls = []

    def energy(x):
        calls.append(x.shape)
        return x.pow(2).sum((1, 2, 3))

    held = viz.maximize_response(net, 0, shape=(1, 3, 8, 8), steps=30, prior=energy, prior_weight=100.0)
    assert len(calls) == 30 and calls[0] == (1, 3, 8, 8)
    assert held.image.norm() < 0.5 * free.image.norm()


def test_default_prior_is_edge_energy_and_smooths(digits_model):
    from advx.ops import edge_energy

    free = viz.maximize_response(digits_model, 2, shape=(1, 1, 8, 8), steps=60, prior_weight=0)
    smooth = viz.maximize_response(digits_model, 2, shape=(1, 1, 8, 8), steps=60, prior_weight=1.0)
    explicit = viz.maximize_response(digits_model, 2, shape=(1, 1, 8, 8), steps=60, prior=advx.EdgeEnergy())
    torch.testing.assert_close(smooth.image, explicit.image)
    assert edge_energy(smooth.image) < edge_energy(free.image)


def test_render_formula_and_range():
    x = torch.randn(3, 2, 5, 4) * torch.tensor([1.0, 10.0, 0.1]).reshape(3, 1, 1, 1) + 7
    r = viz.render(x)
    assert r.shape == x.shape and r.min() >= 0 and r.max() <= 1
    for i in range(3):  # per sample: 0.5 + 0.1 (x - mean) / std
        expected = (0.5 + 0.1 * (x[i] - x[i].mean()) / x[i].std()).clamp(0, 1)
        torch.testing.assert_close(r[i], expected)
    single = viz.render(x[0])
    torch.testing.assert_close(single, r[0])
    big = viz.render(torch.tensor([[[[0.0, 100.0] * 8]]]))
    assert big.min() >= 0 and big.max() <= 1
    flat = viz.render(torch.full((2, 1, 3, 3), 5.0))
    assert torch.equal(flat, torch.full_like(flat, 0.5))


def test_figures_are_png(tmp_path):
    torch.manual_seed(0)
    orig = torch.rand(3, 1, 8, 8)
    adv = (orig + 0.1 * torch.randn_like(orig)).clamp(0, 1)
    p = viz.plot_adversarial(orig, adv, [1, 2, 3], [0.9, 0.8, 0.7], torch.tensor([4, 5, 6]),
                             torch.tensor([0.6, 0.5, 0.99]), tmp_path / "sub" / "adv.png")
    assert_png(p, (200, 300))
    one = viz.plot_adversarial(torch.rand(3, 6, 7), torch.rand(3, 6, 7), 0, 0.5, 1, 0.25, tmp_path / "one.png",
                               magnify=10, class_names=["cat", "dog"])
    assert_png(one)
    assert_png(viz.plot_loss_curves({"sgd": [3, 2.5, 2], "rmsprop": [3, 1, 0.5], "adam": [3, 0.5, 0.1]},
                                    tmp_path / "loss.png", log_y=True, title="t"))
    grid = viz.plot_grid(torch.rand(7, 3, 8, 8), [f"class {i}" for i in range(7)], tmp_path / "grid.png",
                         ncols=4, title="grid")
    assert_png(grid)
    assert_png(viz.plot_grid([torch.rand(8, 8), torch.rand(1, 8, 8)], None, tmp_path / "grid2.png"))
    saved = viz.save_image(torch.rand(2, 3, 5, 6), tmp_path / "img.png")
    assert_png(saved, (6, 5))
    single = viz.save_image(torch.full((1, 4, 4), 1.0), tmp_path / "white.png")
    with Image.open(single) as im:
        assert im.size == (4, 4) and np.asarray(im.convert("L")).min() == 255


def test_figure_errors(tmp_path):
    with pytest.raises(ValueError, match="adversarial has shape"):
        viz.plot_adversarial(torch.rand(1, 8, 8), torch.rand(1, 8, 9), 0, 1.0, 1, 1.0, tmp_path / "a.png")
    with pytest.raises(ValueError, match="pred_adv has 1 entries"):
        viz.plot_adversarial(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), [0, 1], [1, 1], [1], [1, 1],
                             tmp_path / "a.png")
    with pytest.raises(ValueError, match="magnify"):
        viz.plot_adversarial(torch.rand(1, 8, 8), torch.rand(1, 8, 8), 0, 1.0, 1, 1.0, tmp_path / "a.png", magnify=0)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        viz.plot_grid(torch.rand(2, 4, 8, 8), None, tmp_path / "g.png")
    with pytest.raises(ValueError, match="titles has 1"):
        viz.plot_grid(torch.rand(2, 1, 8, 8), ["a"], tmp_path / "g.png")
    with pytest.raises(ValueError, match="at least one"):
        viz.plot_loss_curves({}, tmp_path / "l.png")
    with pytest.raises(ValueError, match="empty"):
        viz.plot_loss_curves({"sgd": []}, tmp_path / "l.png")
    assert not list(tmp_path.iterdir())


def test_figures_leave_pyplot_alone(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    viz.plot_loss_curves({"a": [1.0, 0.5]}, tmp_path / "l.png")
    assert matplotlib.get_backend() == backend


def test_digits_cnn_layer_names():
    assert "features.conv2" in viz.layer_names(DigitsCNN())


# --- figures that explain themselves (issue 13) -------------------------------------


def _suptitle(fig) -> str:
    return fig._suptitle.get_text() if fig._suptitle is not None else ""


def _difference_arrays(fig):
    return [np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.get_gid() == "difference"]


def test_adversarial_figure_has_one_magnification():
    # rows whose largest changes differ (0.05, 0.1, 0.2): a per-row magnification
    # would draw each row's largest change as black/white
    orig = torch.full((3, 1, 4, 4), 0.5)
    adv = orig.clone()
    for i, change in enumerate([0.05, 0.1, 0.2]):
        adv[i, 0, 0, 0] += change
        adv[i, 0, 1, 1] -= change / 2
    fig = figures._adversarial_figure(orig, adv, [1, 2, 3], [0.9, 0.8, 0.7], [4, 5, 6], [0.6, 0.5, 0.4])
    diffs = _difference_arrays(fig)
    assert len(diffs) == 3
    m = 0.5 / 0.2  # the largest change of all rows fills the range
    for i, arr in enumerate(diffs):
        expected = (0.5 + m * (adv[i, 0] - orig[i, 0])).clamp(0, 1).numpy()
        np.testing.assert_allclose(arr, expected, atol=1e-6)
    assert diffs[2].max() == pytest.approx(1.0) and diffs[0].max() == pytest.approx(0.625)
    # an explicit magnification is the same for every row too
    fixed = _difference_arrays(figures._adversarial_figure(orig, adv, 1, 0.9, 2, 0.8, magnify=2.0))
    for i, arr in enumerate(fixed):
        np.testing.assert_allclose(arr, (0.5 + 2.0 * (adv[i, 0] - orig[i, 0])).numpy(), atol=1e-6)
    assert figures._magnification(adv - orig, None) == pytest.approx(m)
    assert figures._magnification(torch.zeros(2, 1, 3, 3), None) == 1.0


def test_adversarial_figure_scale_says_grey_is_no_change():
    orig = torch.full((2, 1, 4, 4), 0.5)
    adv = orig.clone()
    adv[0, 0, 0, 0] = 0.6
    adv[1, 0, 2, 2] = 0.25  # the largest change: 0.25
    fig = figures._adversarial_figure(orig, adv, [1, 2], [0.9, 0.8], [4, 5], [0.6, 0.5])
    fig.draw_without_rendering()
    bars = [ax for ax in fig.axes if "0 (no change)" in [t.get_text() for t in ax.get_xticklabels()]]
    assert len(bars) == 1  # one scale for the whole difference column
    assert [t.get_text() for t in bars[0].get_xticklabels()] == ["-0.25", "0 (no change)", "+0.25"]
    assert "x2" in bars[0].get_xlabel()


def test_adversarial_titles_say_prediction_and_true_label():
    fig = figures._adversarial_figure(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), [0, 1], [0.991, 0.5],
                                      [2, 2], [0.87, 0.6], true_labels=torch.tensor([0, 2]),
                                      class_names=["cat", "dog", "ship"], title="my attack")
    titles = [" ".join(ax.get_title().split()) for ax in fig.axes if ax.get_title()]
    assert titles[0] == "original true: cat, predicted: cat (99.1%)"
    assert titles[1] == "adversarial predicted: ship (87.0%)"
    assert titles[3].startswith("original true: ship, predicted: dog")
    assert _suptitle(fig).startswith("my attack")
    # without true labels the titles claim none
    plain = figures._adversarial_figure(torch.rand(1, 4, 4), torch.rand(1, 4, 4), 3, 0.5, 8, 0.9)
    assert all("true" not in ax.get_title() for ax in plain.axes)
    with pytest.raises(ValueError, match="true_labels has 1 entries"):
        figures._adversarial_figure(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), 0, 1.0, 1, 1.0, true_labels=[1])


def test_adversarial_figure_says_when_it_clips():
    orig = torch.full((2, 1, 4, 4), 0.5)
    inside = figures._adversarial_figure(orig, orig + 0.1, 0, 1.0, 1, 1.0)
    assert "clipped" not in _suptitle(inside)
    adv = orig.clone()
    adv[0, 0, 0, :3] = 1.2   # 3 pixels above 1
    adv[1, 0, 1, 1] = -0.1   # 1 below 0
    fig = figures._adversarial_figure(orig, adv, 0, 1.0, 1, 1.0, title="t")
    assert _suptitle(fig) == "t\nvalues outside [0, 1] clipped for display: 4 pixels"
    rgb = torch.full((1, 3, 2, 2), 0.5)
    rgb_adv = rgb.clone()
    rgb_adv[0, :, 0, 0] = 1.5  # one pixel, three channels
    assert _suptitle(figures._adversarial_figure(rgb, rgb_adv, 0, 1.0, 1, 1.0)).endswith(": 1 pixel")


def test_pick_examples_successes_first_in_order():
    success = torch.tensor([False, True, False, True, True, False])
    assert viz.pick_examples(success, 4).tolist() == [1, 3, 4, 0]
    assert viz.pick_examples(success, 10).tolist() == [1, 3, 4, 0, 2, 5]
    assert viz.pick_examples([False, False], 4).tolist() == [0, 1]
    assert viz.examples_title(success, viz.pick_examples(success, 2)) == \
        "3 of 6 attacks succeeded: 2 successes shown first"
    assert viz.examples_title(success, viz.pick_examples(success, 4)) == \
        "3 of 6 attacks succeeded: 3 successes shown first, then 1 failure"
    assert viz.examples_title([False] * 5, [0, 1]) == "0 of 5 attacks succeeded: 2 failures shown"
    for bad in (0, -1, 2.0):
        with pytest.raises(ValueError, match="n must be"):
            viz.pick_examples(success, bad)


def test_attack_examples_figure_shows_successes_first(tmp_path, digits_model, digits_cache_dir, monkeypatch):
    from advx.cli import main

    calls = []
    monkeypatch.setattr(viz, "plot_adversarial", lambda *a, **k: calls.append((a, k)))
    assert main(["attack", "--cache-dir", str(digits_cache_dir), "--device", "cpu", "--limit", "40",
                 "--eps", "0.05", "--steps", "10", "--out", str(tmp_path)]) == 0
    (orig, adv, p0, c0, p1, c1, path), kwargs = calls[0]
    assert path.name == "examples.png" and len(orig) == 4
    truth = kwargs["true_labels"]
    summary = json.loads((tmp_path / "attack.json").read_text())
    n_success = round(summary["success_rate"] * 40)
    assert 0 < n_success < 40  # so the order is tested
    fooled = (p1 != truth.to(p1.device)).tolist()
    # successes of the attack: fooled images the model had right (an image it got wrong is none)
    import re
    shown = int(re.search(r"(\d+) of 40 attacks succeeded", kwargs["title"]).group(1))
    assert 0 < shown <= n_success
    assert fooled == sorted(fooled, reverse=True) and sum(fooled) == min(4, shown)
    assert "->" not in kwargs["title"]


def test_stretch_maps_percentiles_to_black_and_white():
    image = torch.arange(101, dtype=torch.float32).reshape(1, 1, 101)  # 1st percentile 1, 99th 99
    out = figures._stretch(image[0])
    assert out.flatten()[1] == 0 and out.flatten()[99] == 1
    assert out.flatten()[50] == pytest.approx(0.5)
    assert out.min() == 0 and out.max() == 1  # the tails are clipped
    flat = torch.full((1, 3, 3), 0.5)
    assert torch.equal(figures._stretch(flat), flat)
    low_contrast = viz.render(torch.randn(1, 1, 8, 8))[0]  # the 0.5 + 0.1 z grey
    assert low_contrast.max() - low_contrast.min() < 0.8
    stretched = figures._stretch(low_contrast)
    assert stretched.min() == 0 and stretched.max() == 1


def test_grid_stretches_per_image_and_says_so():
    torch.manual_seed(0)
    images = 0.5 + 0.05 * torch.randn(3, 1, 6, 6)
    images[1] = 0.5 + 0.01 * images[1]  # a flatter image is stretched as far as the others
    fig = figures._grid_figure(images, None)
    shown = [np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.images]
    for k, arr in enumerate(shown):
        np.testing.assert_allclose(arr, figures._stretch(images[k])[0].numpy(), atol=1e-6)
        assert arr.min() == 0 and arr.max() == 1
    assert "contrast stretched per image" in _suptitle(fig)
    raw = figures._grid_figure(images, None, stretch=False, title="t")
    np.testing.assert_allclose(np.asarray(raw.axes[0].images[0].get_array()), images[0, 0].numpy(), atol=1e-6)
    assert _suptitle(raw) == "t"
    out = images.clone()
    out[0, 0, 0, 0] = 1.5
    assert "clipped for display: 1 pixel" in _suptitle(figures._grid_figure(out, None, stretch=False))


def test_grid_row_labels():
    fig = figures._grid_figure(torch.rand(6, 1, 4, 4), None, ncols=3, row_labels=["no prior", "edge-energy prior"])
    labels = [" ".join(ax.get_ylabel().split()) for ax in fig.axes if ax.get_ylabel()]
    assert labels == ["no prior", "edge-energy prior"]
    with pytest.raises(ValueError, match="row_labels has 1 entries but the grid has 2 rows"):
        figures._grid_figure(torch.rand(6, 1, 4, 4), None, ncols=3, row_labels=["a"])


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("titles", [[f"features.conv2 channel {i}" for i in range(8)],
                                    [f"features.layer4.1.conv2.weight_{i}" for i in range(4)]])
def test_grid_titles_do_not_overlap(titles):
    fig = figures._grid_figure(torch.rand(len(titles), 1, 4, 4), titles, title="t")
    fig.draw_without_rendering()
    renderer = fig._get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
    assert len(boxes) == len(titles)
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not _overlap(boxes[i], boxes[j]), (titles[i], titles[j])
    # every title is all there, wrapped
    assert all("\n" in ax.get_title() for ax in fig.axes if ax.get_title())
    assert "".join(fig.axes[0].get_title().split()) == "".join(titles[0].split())


def test_adversarial_titles_do_not_overlap():
    names = ["American Staffordshire terrier", "golden retriever with a very long name indeed"]
    fig = figures._adversarial_figure(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), [0, 1], [0.9, 0.8], [1, 0],
                                      [0.7, 0.6], true_labels=[0, 1], class_names=names)
    fig.draw_without_rendering()
    renderer = fig._get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not _overlap(boxes[i], boxes[j])
