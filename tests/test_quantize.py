"""advx.quantize: adversarial images on the 8-bit grid, inside their ball as a reader of
the PNG files measures it (levels / 255 in float32 against the float32 originals)."""
import pytest
import torch

from advx.quantize import quantize, to_uint8


def _norms(delta, norm):
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1)
    return flat.norm(p=2 if norm == "l2" else 1, dim=1)


def _on_ball(x, eps, norm, gen):
    """Points on the surface of the ball (clamped to [0, 1]): the attacks' typical output."""
    d = torch.randn(x.shape, generator=gen)
    if norm == "linf":
        d = d.sign() * eps
    else:
        p = 2 if norm == "l2" else 1
        d = d / d.flatten(1).norm(p=p, dim=1).reshape(-1, *[1] * (x.dim() - 1)) * eps
    return (x + d).clamp(0, 1)


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("linf", 8 / 255), ("linf", 0.0123), ("l2", 0.5),
                                       ("l2", 0.05), ("l1", 3.0)])
@pytest.mark.parametrize("on_grid", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (7, 3, 5, 3), (64, 1, 8, 8)])
def test_saved_levels_stay_in_the_ball(norm, eps, on_grid, shape):
    gen = torch.Generator().manual_seed(hash((norm, eps, on_grid, shape)) % 2**31)
    x = torch.rand(shape, generator=gen)
    if on_grid:
        x = torch.round(x * 255) / 255
    adv = _on_ball(x, eps, norm, gen)
    q = quantize(adv, x, eps, norm)
    assert q.shape == adv.shape and q.dtype == adv.dtype
    back = to_uint8(q).float() / 255  # what a reader of the PNG gets
    assert torch.equal(back, q)
    assert (_norms(back - x, norm) <= eps).all()
    assert (q >= 0).all() and (q <= 1).all()
    # each pixel stays on one of the two levels around its value
    assert ((q - adv).abs() * 255 <= 1 + 1e-4).all()


def test_plain_rounding_leaves_the_ball_and_quantize_does_not():
    # the numbers: eps 0.1 rounded to the nearest level gave max |delta| 0.10196
    gen = torch.Generator().manual_seed(1)
    x = torch.round(torch.rand(256, 3, 8, 8, generator=gen) * 255) / 255
    adv = _on_ball(x, 0.1, "linf", gen)
    rounded = torch.round(adv * 255) / 255
    assert float(_norms(rounded - x, "linf").max()) > 0.1
    assert float(_norms(quantize(adv, x, 0.1) - x, "linf").max()) <= 0.1


def test_l2_rounds_toward_the_original_only_where_needed():
    gen = torch.Generator().manual_seed(2)
    x = torch.round(torch.rand(32, 1, 8, 8, generator=gen) * 255) / 255
    adv = _on_ball(x, 0.5, "l2", gen)
    q = quantize(adv, x, 0.5, "l2")
    nearest = torch.round(adv * 255) / 255
    changed = (q != nearest).flatten(1).sum(1)
    # most pixels keep the nearest level; only enough of them move to fit the ball
    assert (changed < 64 // 2).all() and changed.sum() > 0
    assert (_norms(q - x, "l2") <= 0.5).all()


def test_per_sample_eps_bounds_and_inputs_unchanged():
    gen = torch.Generator().manual_seed(3)
    x = 0.1 + 0.8 * torch.rand(5, 3, 4, 4, generator=gen)  # the clean images inside the bounds
    eps = torch.tensor([0.01, 0.02, 0.05, 0.1, 0.3])
    adv = torch.stack([_on_ball(x[i:i + 1], float(e), "linf", gen)[0] for i, e in enumerate(eps)]).clamp(0.1, 0.9)
    x0, adv0 = x.clone(), adv.clone()
    q = quantize(adv, x, eps, "linf", bounds=(0.1, 0.9))
    assert torch.equal(x, x0) and torch.equal(adv, adv0)
    assert ((to_uint8(q).float() / 255 - x).abs().flatten(1).amax(1) <= eps).all()
    assert (q >= 0.1).all() and (q <= 0.9).all()


def test_empty_and_bad_arguments():
    assert quantize(torch.rand(0, 3, 2, 2), torch.rand(0, 3, 2, 2), 0.1).shape == (0, 3, 2, 2)
    x = torch.rand(2, 3)
    with pytest.raises(ValueError, match="shape"):
        quantize(x, torch.rand(2, 4), 0.1)
    with pytest.raises(ValueError, match="eps"):
        quantize(x, x, -0.1)
    with pytest.raises(ValueError, match="norm"):
        quantize(x, x, 0.1, "l3")
    with pytest.raises(ValueError, match="levels"):
        quantize(x, x, 0.1, levels=1)
    with pytest.raises(ValueError, match="eps has 3 values"):
        quantize(x, x, torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(TypeError, match="floating point"):
        quantize(x.to(torch.uint8), x, 0.1)
