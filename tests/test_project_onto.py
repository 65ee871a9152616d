"""advx.ops.project_onto_: the exact projection onto ball ∩ box, against the reference
(bisection in float64), against an independent solver (Dykstra's alternating projections),
and the budget promise in every dtype."""
import math

import pytest
import torch

from advx import ops, reference

NORMS = ["linf", "l2", "l1"]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SHAPES = [(1, 1), (3, 7), (5, 3, 4, 5), (2, 3, 33, 31), (0, 4), (64, 257)]


def tol(dtype):
    if dtype in (torch.bfloat16, torch.float16):
        return dict(atol=2e-2, rtol=2e-2)
    return dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-9, rtol=1e-9)


def case(shape, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = (torch.rand(shape, generator=gen) * 1.8 - 0.4).to(device=device, dtype=dtype)  # partly outside [0, 1]
    c = torch.rand(shape, generator=gen).to(device=device, dtype=dtype)
    eps = (torch.rand(shape[0], generator=gen) * 1.5 + 0.01).to(device)
    return y, c, eps


def sizes(z, c, norm):
    d = (z.double() - c.double()).reshape(z.shape[0], -1)
    if norm == "linf":
        return d.abs().amax(1) if d.shape[1] else d.sum(1)
    return torch.linalg.vector_norm(d, dim=1) if norm == "l2" else d.abs().sum(1)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference_and_stays_inside(device, norm, dtype, shape):
    y, c, eps = case(shape, dtype, device)
    y_before, c_before = y.clone(), c.clone()
    got = ops.project_onto_(y.clone(), c, eps, norm)
    want = reference.project_onto_(y.clone(), c, eps, norm)
    torch.testing.assert_close(got, want, **tol(dtype))
    assert torch.equal(c, c_before) and torch.equal(y, y_before)
    if got.numel():
        assert bool((sizes(got, c, norm) <= eps.double()).all())
        assert float(got.double().min()) >= 0 and float(got.double().max()) <= 1


def dykstra(y, c, eps, norm, bounds, iters=20000):
    """Projection onto ball ∩ box by Dykstra's alternating projections, float64, one sample."""
    lo, hi = bounds

    def ball(v):
        d = v - c
        if norm == "l2":
            n = d.norm()
            return c + d * min(1.0, eps / float(n)) if n > 0 else v
        # l1: the projection onto the l1 ball by sorting (Duchi et al.)
        a = d.abs()
        if float(a.sum()) <= eps:
            return v
        u, _ = a.sort(descending=True)
        css = u.cumsum(0)
        k = torch.arange(1, u.numel() + 1, dtype=u.dtype)
        rho = int((u - (css - eps) / k > 0).nonzero().max())
        theta = (css[rho] - eps) / (rho + 1)
        return c + d.sign() * (a - theta).clamp_min(0)

    x, p, q = y.clone(), torch.zeros_like(y), torch.zeros_like(y)
    for _ in range(iters):
        z = ball(x + p)
        p = x + p - z
        x = (z + q).clamp(lo, hi)
        q = z + q - x
    return x


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_is_the_nearest_point(norm):
    gen = torch.Generator().manual_seed(3)
    for trial in range(6):
        d = 2 + trial
        y = torch.rand(1, d, generator=gen, dtype=torch.float64) * 2 - 0.5
        c = torch.rand(1, d, generator=gen, dtype=torch.float64)
        eps = float(torch.rand((), generator=gen)) * 0.8 + 0.05
        got = ops.project_onto_(y.clone(), c, eps, norm)
        want = dykstra(y[0], c[0], eps, norm, (0.0, 1.0))
        torch.testing.assert_close(got[0], want, atol=1e-6, rtol=0)


def test_the_example_where_scale_then_clamp_is_not_the_projection():
    y = torch.tensor([[1.5, 1.2]], dtype=torch.float64)
    c = torch.tensor([[0.95, 0.5]], dtype=torch.float64)
    z = ops.project_onto_(y.clone(), c, 0.5, "l2")
    torch.testing.assert_close(z, torch.tensor([[1.0, 0.9975]], dtype=torch.float64), atol=1e-3, rtol=0)
    assert float((z - y).norm()) == pytest.approx(0.540, abs=1e-3)
    scaled = ops.pgd_step_(y.clone(), torch.zeros_like(y), c, 0.5, 0.5, "l2")  # scale, then clamp
    assert float((scaled - y).norm()) > float((z - y).norm()) + 0.04


@pytest.mark.parametrize("norm", NORMS)
def test_inside_points_box_faces_and_huge_eps(norm, device):
    c = torch.rand(4, 10, device=device, dtype=torch.float64)
    inside = c + (torch.rand_like(c) - 0.5) * 0.01
    inside = inside.clamp(0, 1)
    assert torch.equal(ops.project_onto_(inside.clone(), c, 0.5, norm), inside)  # already inside: unchanged
    faces = torch.where(torch.rand_like(c) > 0.5, torch.ones_like(c), torch.zeros_like(c))
    out = ops.project_onto_(faces.clone(), c, 0.05, norm)
    assert bool((sizes(out, c, norm) <= 0.05).all())
    y = torch.rand_like(c) * 3 - 1  # eps larger than the box allows: the projection is the clamp
    torch.testing.assert_close(ops.project_onto_(y.clone(), c, 100.0, norm), y.clamp(0, 1))
    torch.testing.assert_close(ops.project_onto_(y.clone(), c, 1e39, norm, bounds=None), y)


def test_strided_and_per_sample(device):
    y, c, eps = case((4, 6, 5), torch.float32, device)
    yt = y.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    a = ops.project_onto_(yt, c, eps, "l2")
    b = ops.project_onto_(y.clone(), c, eps, "l2")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    single = torch.cat([ops.project_onto_(y[i:i + 1].clone(), c[i:i + 1], float(eps[i]), "l1") for i in range(4)])
    torch.testing.assert_close(ops.project_onto_(y.clone(), c, eps, "l1"), single, rtol=1e-6, atol=1e-6)


def test_opcheck(device):
    y, c, eps = case((3, 2, 5), torch.float32, device)
    for norm in NORMS:
        torch.library.opcheck(torch.ops.advx.project_onto_.default, (y.clone(), c, eps.float(), norm, 0.0, 1.0))


def test_bad_input():
    y, c, _ = case((2, 5), torch.float32, "cpu")
    with pytest.raises(ValueError, match="norm must be one of"):
        ops.project_onto_(y, c, 0.1, "l3")
    with pytest.raises(ValueError, match="center has shape"):
        ops.project_onto_(y, c[:1], 0.1)
    with pytest.raises(TypeError, match="center has dtype"):
        ops.project_onto_(y, c.double(), 0.1)
    with pytest.raises(ValueError, match="eps"):
        ops.project_onto_(y, c, -0.1)
    with pytest.raises(ValueError, match="x has elements that share memory"):
        ops.project_onto_(torch.zeros(1, 1).expand(2, 5), c, 0.1)
    assert math.isfinite(float(ops.project_onto_(y.clone(), c, 0.1).sum()))


# ---- PGD with an L1 budget: the sparse step and the exact projection ----------------

def test_l1_pgd_stays_inside_and_attacks(digits_cache_dir):
    from advx.attacks import PGD
    from advx.data import load_digits
    from advx.models import train_digits_cnn

    model = train_digits_cnn(digits_cache_dir).eval()
    split = load_digits()
    x, y = split.test_images[:100], split.test_labels[:100]
    weak = PGD(model, 1.0, steps=20, norm="l1", seed=0).run(x, y)
    strong = PGD(model, 4.0, steps=20, norm="l1", seed=0).run(x, y)
    for res, eps in ((weak, 1.0), (strong, 4.0)):
        assert float(sizes(res.adv, x, "l1").max()) <= eps
        assert res.adv.min() >= 0 and res.adv.max() <= 1
        torch.testing.assert_close(res.norm, sizes(res.adv, x, "l1").float())
    assert strong.success_rate > weak.success_rate > 0


def test_l1_step_is_sparse():
    from torch import nn

    from advx.attacks import PGD

    model = nn.Sequential(nn.Flatten(), nn.Linear(100, 3))
    x = torch.full((2, 100), 0.5)
    adv = PGD(model, 10.0, alpha=1.0, steps=1, norm="l1", random_start=False, l1_sparsity=0.05)(
        x, torch.tensor([0, 1]))
    changed = ((adv - x).abs() > 0).sum(dim=1)
    assert changed.tolist() == [5, 5]  # 5 % of 100 coordinates
    torch.testing.assert_close((adv - x).abs().sum(dim=1), torch.ones(2))  # alpha = 1 of unit L1 steps


def test_l1_pgd_bad_input():
    from torch import nn

    from advx.attacks import PGD

    model = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="optimizer='sign'"):
        PGD(model, 1.0, norm="l1", optimizer="adam")
    with pytest.raises(ValueError, match="l1_sparsity"):
        PGD(model, 1.0, norm="l1", l1_sparsity=0.0)
    with pytest.raises(ValueError, match="norm must be one of"):
        PGD(model, 1.0, norm="l0")
