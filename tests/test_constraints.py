"""constraint= in advx.optim and the fused ops: every iterate stays in the ball and the
box, and equals a torch.optim step followed by the reference projection."""
import math

import pytest
import torch
from torch.testing import assert_close

import advx
from advx import reference

OPTIMIZERS = {
    "SGD": dict(lr=0.05, momentum=0.9),
    "Adagrad": dict(lr=0.1),
    "RMSprop": dict(lr=0.01, centered=True),
    "Adam": dict(lr=0.05, amsgrad=True),
    "AdamW": dict(lr=0.05, weight_decay=0.1),
}

# [B, C, H, W] inputs of odd sizes: contiguous, channels_last, and a non-dense view
LAYOUTS = ["contiguous", "channels_last", "strided"]


def make_input(layout, dtype, device, gen, batch=5):
    x = torch.rand(batch, 3, 7, 9 if layout != "strided" else 18, generator=gen, dtype=torch.float64)
    x = x.to(dtype=dtype, device=device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = x[..., ::2]
    return x


def clone_layout(x, layout):
    """A copy of x with x's layout; a strided x gets a strided (non-dense) copy."""
    if layout == "strided":
        out = torch.empty(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)[..., ::2]
        return out.copy_(x)
    return x.clone()


def project_reference_(p, center, eps, norm, lo, hi):
    """What the constraint means, with advx.reference.project_: per sample along dim 0."""
    delta = (p - center).reshape(p.shape[0], -1)
    reference.project_(delta, eps, norm)
    p.copy_(torch.clamp(center + delta.reshape(p.shape), lo, hi))


def fused_and_reference_step(name, x, grad, state, **kwargs):
    """One step of the fused op ``name`` and of its advx.reference twin, each on its own
    copies of x, the three state tensors and a step counter of 2: (ours, theirs), the x's."""
    args = {"sgd_step_": lambda s: ([s[0]], [s[1]], [s[2]]),
            "adagrad_step_": lambda s: ([s[0]], [s[1]], [s[2]], s[5]),
            "rmsprop_step_": lambda s: ([s[0]], [s[1]], [s[2]], [], [], s[5]),
            "adam_step_": lambda s: ([s[0]], [s[1]], [s[2]], [s[3]], [], s[5])}[name]
    out = []
    for impl in (advx.ops, reference):
        lists = [x.clone(), grad, *[t.clone() for t in state], [torch.tensor(2.0, device=x.device)]]
        getattr(impl, name)(*args(lists), **kwargs)
        out.append(lists[0])
    return out


def assert_inside(p, center, eps, norm, lo, hi):
    delta = (p - center).reshape(p.shape[0], -1).double()
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    eps = eps.double().cpu() if isinstance(eps, torch.Tensor) else torch.full((p.shape[0],), eps, dtype=torch.float64)
    assert bool((size.cpu() <= eps * (1 + 1e-5) + 1e-7).all()), f"outside the {norm} ball: {size} > {eps}"
    assert bool((p >= lo).all()) and bool((p <= hi).all()), "outside the box"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_iterates_stay_inside_and_match_torch_then_project(name, norm, layout, device):
    gen = torch.Generator().manual_seed(1)
    dtype = torch.float32
    x0 = make_input(layout, dtype, device, gen)
    # one radius per sample; small enough that the ball binds, large enough to move
    eps = torch.tensor([0.02, 0.05, 0.1, 0.3, 1.0], device=device) * (1.0 if norm == "linf" else 8.0)
    lo, hi = 0.0, 1.0
    ours_x = torch.nn.Parameter(clone_layout(x0, layout))
    their_x = torch.nn.Parameter(clone_layout(x0, layout))
    assert ours_x.is_contiguous() == (layout == "contiguous")
    ours = getattr(advx.optim, name)([ours_x], constraint=advx.LpBall(x0, eps=eps, norm=norm, bounds=(lo, hi)),
                                     **OPTIMIZERS[name])
    theirs = getattr(torch.optim, name)([their_x], **OPTIMIZERS[name])
    for _ in range(25):
        g = torch.randn(x0.shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
        ours_x.grad, their_x.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
        with torch.no_grad():
            project_reference_(their_x, x0, eps, norm, lo, hi)
        assert_inside(ours_x.detach(), x0, eps, norm, lo, hi)
    assert_close(ours_x.detach(), their_x.detach(), rtol=1e-5, atol=1e-6)
    assert_close(ours.state[ours_x]["step" if name != "SGD" else "momentum_buffer"],
                 theirs.state[their_x]["step" if name != "SGD" else "momentum_buffer"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_float_eps_origin_center_several_params(norm, dtype, device):
    gen = torch.Generator().manual_seed(2)
    shapes = [(4, 3, 5), (1,), (6,), (), (0, 3)]
    init = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device) for s in shapes]
    ours_p = [torch.nn.Parameter(t.clone()) for t in init]
    their_p = [torch.nn.Parameter(t.clone()) for t in init]
    eps = 0.3
    ours = advx.optim.Adam(ours_p, lr=0.1, constraint=advx.LpBall(eps=eps, norm=norm))
    theirs = torch.optim.Adam(their_p, lr=0.1)
    for _ in range(15):
        for a, b in zip(ours_p, their_p):
            g = torch.randn(a.shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
            a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
        with torch.no_grad():
            for p in their_p:
                if p.numel():
                    flat = p.reshape(p.shape[0] if p.dim() else 1, -1)
                    project_reference_(flat, torch.zeros_like(flat), eps, norm, -math.inf, math.inf)
    for a, b in zip(ours_p, their_p):
        assert_close(a.detach(), b.detach())
        if a.numel():
            flat = a.detach().reshape(a.shape[0] if a.dim() else 1, -1)
            assert_inside(flat, torch.zeros_like(flat), eps, norm, -math.inf, math.inf)


def test_box_alone_and_per_group_constraints(device):
    gen = torch.Generator().manual_seed(3)
    a = torch.nn.Parameter(torch.randn(3, 4, generator=gen).to(device))
    b = torch.nn.Parameter(torch.randn(5, generator=gen).to(device))
    centers = [torch.zeros(5, device=device)]
    opt = advx.optim.SGD([{"params": [a]},
                          {"params": [b], "constraint": advx.LpBall(centers, eps=0.25, norm="linf")}],
                         lr=1.0, constraint=advx.Box(-0.5, 0.5))
    b_before = b.detach().clone()
    for _ in range(5):
        a.grad = torch.randn(3, 4, generator=gen).to(device)
        b.grad = torch.randn(5, generator=gen).to(device)
        opt.step()
        assert bool((a.abs() <= 0.5).all())
        assert bool(((b - centers[0]).abs() <= 0.25).all())
    assert not torch.equal(b.detach(), b_before)
    assert isinstance(opt.param_groups[0]["constraint"], advx.Box)
    assert torch.equal(centers[0], torch.zeros(5, device=device))  # read, never written


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", ["sgd_step_", "adagrad_step_", "rmsprop_step_", "adam_step_"])
def test_fused_op_constraint_matches_reference(name, norm, device):
    gen = torch.Generator().manual_seed(4)
    x0 = make_input("channels_last", torch.float64, device, gen)
    x = x0 + 0.5 * torch.randn(x0.shape, generator=gen, dtype=torch.float64).to(device)
    grads = [torch.randn(x0.shape, generator=gen, dtype=torch.float64).to(device)]
    eps = torch.tensor([0.01, 0.1, 0.5, 2.0, 50.0], dtype=torch.float64, device=device)
    eps_before = eps.clone()
    constraint = advx.LpBall([x0], eps=eps, norm=norm, bounds=(-0.25, 1.25))
    state = [torch.rand(x0.shape, generator=gen, dtype=torch.float64).to(device) for _ in range(3)]
    kwargs = dict(lr=0.1, constraint=constraint) if name != "sgd_step_" else dict(lr=0.1, momentum=0.5, constraint=constraint)
    ours, theirs = fused_and_reference_step(name, x, grads[0], state, **kwargs)
    assert_close(ours, theirs)
    assert torch.equal(eps, eps_before)
    assert_inside(ours, x0, eps, norm, -0.25, 1.25)


# ------------------------------------------------------------------ validation

@pytest.mark.parametrize("kwargs,error,match", [
    (dict(eps=0.0), ValueError, "eps must be positive"),
    (dict(eps=-1.0), ValueError, "eps must be positive"),
    (dict(eps=float("nan")), ValueError, "eps must be positive"),
    (dict(eps=float("inf")), ValueError, "eps must be positive"),
    (dict(eps=torch.tensor([0.1, 0.0])), ValueError, "eps must be positive"),
    (dict(eps=torch.tensor([0.1, float("nan")])), ValueError, "eps must be positive"),
    (dict(eps=torch.ones(2, 2)), ValueError, "eps must be a float, a 0-dim or a \\[B\\] tensor"),
    (dict(eps="0.1"), TypeError, "eps must be a float or a tensor"),
    (dict(), TypeError, "needs eps"),
    (dict(eps=0.1, norm="l0"), ValueError, "norm must be one of"),
    (dict(eps=0.1, bounds=(1.0, 0.0)), ValueError, "bounds must satisfy lo <= hi"),
    (dict(eps=0.1, bounds=(0.0, float("nan"))), ValueError, "bounds must satisfy lo <= hi"),
    (dict(eps=0.1, bounds=0.5), TypeError, "bounds must be a pair"),
    (dict(eps=0.1, center="x"), TypeError, "center must be None, a tensor or a list"),
    (dict(eps=0.1, center=[torch.zeros(2, dtype=torch.int64)]), TypeError, "center\\[0\\] must be a floating"),
])
def test_lpball_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        advx.LpBall(**kwargs)


def test_box_rejects_bad_bounds():
    with pytest.raises(ValueError, match="lo <= hi"):
        advx.Box(1.0, -1.0)
    with pytest.raises(ValueError, match="lo <= hi"):
        advx.Box(float("nan"), 1.0)


@pytest.mark.parametrize("constraint,error,match", [
    (lambda: advx.LpBall(torch.zeros(4, 3, dtype=torch.float64), eps=0.1), TypeError, "center has dtype"),
    (lambda: advx.LpBall(torch.zeros(4, 4), eps=0.1), ValueError, "center has shape"),
    (lambda: advx.LpBall([torch.zeros(4, 3)] * 2, eps=0.1), ValueError, "center has 2 tensor"),
    (lambda: advx.LpBall(eps=torch.ones(5)), ValueError, "eps has shape \\(5,\\) but parameter 0 has batch size 4"),
])
def test_constraint_mismatch_with_params(constraint, error, match):
    p = torch.nn.Parameter(torch.randn(4, 3))
    with pytest.raises(error, match=match):
        advx.optim.Adam([p], constraint=constraint())
    p.grad = torch.randn(4, 3)
    with pytest.raises(error, match=match):
        advx.ops.sgd_step_([p.detach()], [p.grad], [], lr=0.1, constraint=constraint())


def test_constraint_rejects_complex_params():
    p = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.complex64))
    with pytest.raises(TypeError, match="real parameters"):
        advx.optim.Adam([p], constraint=advx.Box(0, 1))
