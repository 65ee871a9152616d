"""advx.nn: Normalize (pixel-space wrapper) and the gradient reversal layer."""
import pytest
import torch
from torch import nn

import advx
from advx.nn import GradReverse, Normalize, grad_reverse

from _attack_models import images, small_cnn


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
def test_normalize_equals_manual(device, layout):
    model = small_cnn(device, channels=3)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    wrapped = Normalize(model, mean, std).to(device)
    x = images(5, (3, 9, 7), device)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "noncontiguous":
        x = x.transpose(2, 3)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    torch.testing.assert_close(wrapped(x), model((x - m) / s))
    assert advx.Normalize is Normalize


def test_normalize_buffers_follow_the_module(device):
    wrapped = Normalize(small_cnn(), 0.5, 0.25).to(device)
    assert wrapped.mean.device.type == torch.device(device).type
    assert {"mean", "std"} <= set(wrapped.state_dict())
    x = images(3, device=device)
    torch.testing.assert_close(wrapped(x), wrapped.model((x - 0.5) / 0.25))
    double = Normalize(small_cnn(device, dtype=torch.float64), [0.5], [0.25]).to(device)
    assert double(x.double()).dtype == torch.float64


def test_normalize_gradient_is_in_pixel_space(device):
    model = small_cnn(device, channels=3)
    std = torch.tensor([0.2, 0.5, 1.0], device=device)
    wrapped = Normalize(model, [0.1, 0.2, 0.3], std.tolist())
    x = images(4, (3, 8, 8), device).requires_grad_()
    (g_pixel,) = torch.autograd.grad(wrapped(x).sum(), x)
    z = ((x - torch.tensor([0.1, 0.2, 0.3], device=device).view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)).detach()
    z.requires_grad_()
    (g_norm,) = torch.autograd.grad(model(z).sum(), z)
    torch.testing.assert_close(g_pixel, g_norm / std.view(1, 3, 1, 1))


def test_normalize_bad_arguments():
    model = small_cnn(channels=3)
    with pytest.raises(ValueError, match="std"):
        Normalize(model, [0.5] * 3, [0.2, 0.0, 0.2])
    with pytest.raises(ValueError, match="mean"):
        Normalize(model, [[0.5]], [0.2])
    with pytest.raises(ValueError, match="channels"):
        Normalize(model, [0.5] * 3, [0.2] * 2)
    with pytest.raises(TypeError, match="model"):
        Normalize(None, 0.5, 0.2)
    with pytest.raises(ValueError, match="channels"):
        Normalize(model, [0.5] * 3, [0.2] * 3)(images(2, (4, 8, 8)))


@pytest.mark.parametrize("lambd", [1.0, 0.3, -2.0])
def test_grad_reverse(device, lambd):
    x = torch.randn(6, 5, device=device, requires_grad=True)
    weights = torch.randn(6, 5, device=device)
    out = grad_reverse(x, lambd)
    assert torch.equal(out, x)
    (g,) = torch.autograd.grad((out * weights).sum(), x)
    torch.testing.assert_close(g, -lambd * weights)
    layer = GradReverse(lambd)
    (g_layer,) = torch.autograd.grad((layer(x) * weights).sum(), x)
    torch.testing.assert_close(g_layer, g)


def test_grad_reverse_in_a_network(device):
    """Domain-adversarial set-up: the feature gradient from the domain head is reversed."""
    torch.manual_seed(0)
    features, head = nn.Linear(4, 3).to(device), nn.Linear(3, 2).to(device)
    x = torch.randn(8, 4, device=device)
    plain = torch.autograd.grad(head(features(x)).pow(2).sum(), features.weight)[0]
    reversed_ = torch.autograd.grad(head(GradReverse(0.5)(features(x))).pow(2).sum(), features.weight)[0]
    torch.testing.assert_close(reversed_, -0.5 * plain)


def test_grad_reverse_bad_arguments():
    with pytest.raises(TypeError, match="lambd"):
        grad_reverse(torch.ones(2), "1")
    with pytest.raises(TypeError, match="lambd"):
        GradReverse(float("nan"))
    with pytest.raises(TypeError, match="x"):
        grad_reverse([1.0, 2.0])
