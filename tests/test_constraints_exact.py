"""LpBall(exact=True): the optimizers' constraint as the Euclidean projection onto
ball ∩ box (advx.ops.project_onto_ inside the fused step), against torch.optim followed by
the reference projection, for L2 and L1, over layouts and devices."""
import pytest
import torch
from torch.testing import assert_close

import advx
from advx import reference

from test_constraints import LAYOUTS, OPTIMIZERS, clone_layout, fused_and_reference_step, make_input


def onto_reference_(p, center, eps, norm, lo, hi):
    flat = p.detach().reshape(p.shape[0], -1).clone()
    reference.project_onto_(flat, center.reshape(p.shape[0], -1), eps, norm, (lo, hi))
    p.data.copy_(flat.reshape(p.shape))


def sizes(p, center, norm):
    d = (p.double() - center.double()).reshape(p.shape[0], -1)
    return d.norm(dim=1) if norm == "l2" else d.abs().sum(1)


def test_the_issue_example_is_the_nearest_point():
    center = torch.tensor([[0.95, 0.5]], dtype=torch.float64)
    point = torch.tensor([[1.5, 1.2]], dtype=torch.float64)
    x = torch.nn.Parameter(point.clone())
    opt = advx.optim.SGD([x], lr=0.0, constraint=advx.LpBall(center, eps=0.5, norm="l2", bounds=(0, 1), exact=True))
    x.grad = torch.zeros_like(x)
    opt.step()
    assert_close(x.detach(), torch.tensor([[1.0, 0.99749]], dtype=torch.float64), atol=1e-4, rtol=0)
    # the published P (scale, then clamp) lands farther from the point
    y = torch.nn.Parameter(point.clone())
    opt = advx.optim.SGD([y], lr=0.0, constraint=advx.LpBall(center, eps=0.5, norm="l2", bounds=(0, 1)))
    y.grad = torch.zeros_like(y)
    opt.step()
    assert float((x.detach() - point).norm()) < float((y.detach() - point).norm()) - 0.04


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("norm", ["l2", "l1"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_iterates_match_torch_then_exact_projection(name, norm, layout, device):
    gen = torch.Generator().manual_seed(1)
    x0 = make_input(layout, torch.float64, device, gen)
    eps = torch.tensor([0.02, 0.05, 0.1, 0.3, 1.0], dtype=torch.float64, device=device) * (8.0 if norm == "l2" else 40.0)
    lo, hi = 0.0, 1.0
    ours_x = torch.nn.Parameter(clone_layout(x0, layout))
    their_x = torch.nn.Parameter(clone_layout(x0, layout))
    constraint = advx.LpBall(x0, eps=eps, norm=norm, bounds=(lo, hi), exact=True)
    ours = getattr(advx.optim, name)([ours_x], constraint=constraint, **OPTIMIZERS[name])
    theirs = getattr(torch.optim, name)([their_x], **OPTIMIZERS[name])
    for _ in range(12):
        g = torch.randn(x0.shape, generator=gen, dtype=torch.float64).to(device)
        ours_x.grad, their_x.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
        onto_reference_(their_x, x0, eps, norm, lo, hi)
        assert bool((sizes(ours_x.detach(), x0, norm) <= eps).all())
        assert float(ours_x.detach().min()) >= lo and float(ours_x.detach().max()) <= hi
    assert_close(ours_x.detach(), their_x.detach(), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("norm", ["l2", "l1"])
@pytest.mark.parametrize("name", ["sgd_step_", "adagrad_step_", "rmsprop_step_", "adam_step_"])
def test_fused_op_matches_reference(name, norm, dtype, device):
    gen = torch.Generator().manual_seed(4)
    x0 = make_input("contiguous", torch.float64, device, gen).to(dtype)
    x = (x0 + 0.5 * torch.randn(x0.shape, generator=gen, dtype=torch.float64).to(device)).to(dtype)
    grads = [torch.randn(x0.shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)]
    eps = torch.tensor([0.01, 0.1, 0.5, 2.0, 50.0], dtype=torch.float64, device=device)
    constraint = advx.LpBall([x0], eps=eps, norm=norm, bounds=(-0.25, 1.25), exact=True)
    state = [torch.rand(x0.shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype) for _ in range(3)]
    ours, theirs = fused_and_reference_step(name, x, grads[0], state, lr=0.1, constraint=constraint)
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-5)
    assert_close(ours, theirs, **tol)
    assert bool((sizes(ours, x0, norm) <= eps).all())
    assert float(ours.double().min()) >= -0.25 and float(ours.double().max()) <= 1.25


def test_skipped_step_changes_nothing(device):
    """found_inf set (a GradScaler's overflow): neither the update nor the projection
    happens, even for a starting point outside the ball."""
    gen = torch.Generator().manual_seed(5)
    p = torch.rand(4, 9, generator=gen).to(device) * 3
    before = p.clone()
    constraint = advx.LpBall(torch.zeros_like(p), eps=0.1, norm="l2", bounds=(0, 1), exact=True)
    advx.ops.sgd_step_([p], [torch.randn(4, 9, generator=gen).to(device)], [None], lr=0.1,
                       found_inf=torch.ones((), device=device), constraint=constraint)
    assert torch.equal(p, before)
    advx.ops.sgd_step_([p], [torch.randn(4, 9, generator=gen).to(device)], [None], lr=0.1,
                       found_inf=torch.zeros((), device=device), constraint=constraint)
    assert bool((p.norm(dim=1) <= 0.1).all())


def test_several_params_origin_center(device):
    gen = torch.Generator().manual_seed(6)
    shapes = [(4, 3, 5), (1,), (6,), (), (0, 3)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(device)) for s in shapes]
    opt = advx.optim.Adam(params, lr=0.5, constraint=advx.LpBall(eps=0.3, norm="l1", exact=True))
    for _ in range(5):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(device)
        opt.step()
    for p in params:
        if p.numel():
            flat = p.detach().reshape(p.shape[0] if p.dim() else 1, -1).double()
            assert bool((flat.abs().sum(1) <= 0.3).all())


def test_repr_and_flags():
    assert "exact=True" in repr(advx.LpBall(eps=0.1, norm="l2", exact=True))
    assert advx.LpBall(eps=0.1, norm="l1").exact  # L1 is always the exact projection
    with pytest.raises(TypeError, match="exact"):
        advx.LpBall(eps=0.1, exact="yes")
