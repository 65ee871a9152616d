"""Regression tests for bad input and faults at the op level (issue 10): partial
aliasing, version counters, tensor learning rates, refused calls that must change
nothing, huge finite budgets, meta tensors. Each test fails without its fix."""
import math

import pytest
import torch

import advx
from advx import ops

OPT_OPS = {
    "sgd": lambda p, g, **kw: ops.sgd_step_(p, g, [None] * len(p), momentum=0.9, **kw),
    "adagrad": lambda p, g, **kw: ops.adagrad_step_(p, g, [torch.zeros_like(t) for t in p],
                                                    [torch.zeros(()) for _ in p], **kw),
    "rmsprop": lambda p, g, **kw: ops.rmsprop_step_(p, g, [torch.zeros_like(t) for t in p], [], [],
                                                    [torch.zeros(()) for _ in p], **kw),
    "adam": lambda p, g, **kw: ops.adam_step_(p, g, [torch.zeros_like(t) for t in p],
                                              [torch.zeros_like(t) for t in p], [],
                                              [torch.zeros(()) for _ in p], **kw),
}


# ---------------------------------------------------------------- kind 2: partial aliasing

@pytest.mark.parametrize("shift", [1, -1, 3], ids=["ahead", "behind", "ahead3"])
@pytest.mark.parametrize("which", ["x_orig", "grad"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_step_partial_overlap_computes_as_with_separate_tensors(shift, which, norm, device):
    n, batch = 7, 3
    buf = torch.rand(batch * n + abs(shift), device=device)
    a, b = (abs(shift), 0) if shift > 0 else (0, abs(shift))
    x_adv = buf[a:a + batch * n].view(batch, n)
    other = buf[b:b + batch * n].view(batch, n)
    grad = torch.randn(batch, n, device=device)
    x_orig = torch.rand(batch, n, device=device)
    if which == "x_orig":
        x_orig = other
    else:
        grad = other
    expected = x_adv.clone()
    ops.pgd_step_(expected, grad.clone(), x_orig.clone(), 0.1, 0.05, norm)
    ops.pgd_step_(x_adv, grad, x_orig, 0.1, 0.05, norm)
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=0)


def test_pgd_step_full_aliasing_still_works(device):
    x = torch.rand(4, 9, device=device)
    grad = torch.randn(4, 9, device=device)
    expected = x.clone()
    ops.pgd_step_(expected, grad, x.clone(), 0.1, 0.05)
    ops.pgd_step_(x, grad, x, 0.1, 0.05)  # x_orig is x_adv itself
    torch.testing.assert_close(x, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(OPT_OPS))
def test_optimizer_grad_partially_overlapping_param(name, device):
    buf = torch.randn(17, device=device)
    p, g = buf[1:17], buf[0:16]
    p_ref, g_ref = p.clone(), g.clone()
    OPT_OPS[name]([p_ref], [g_ref], lr=0.1)
    OPT_OPS[name]([p], [g], lr=0.1)
    torch.testing.assert_close(p, p_ref, rtol=0, atol=0)


def test_optimizer_state_sharing_param_memory_is_refused(device):
    buf = torch.randn(17, device=device)
    p = buf[1:17]
    before = buf.clone()
    with pytest.raises(ValueError, match=r"exp_avgs\[0\] and params\[0\] share memory"):
        ops.adam_step_([p], [torch.randn(16, device=device)], [buf[0:16]], [torch.zeros(16, device=device)], [],
                       [torch.zeros((), device=device)], lr=0.1)
    assert torch.equal(buf, before)


# ---------------------------------------------------------------- kind 4: version counters

def test_in_place_ops_bump_the_version_counter(device):
    x = torch.rand(3, 5, device=device)
    v = x._version
    ops.pgd_step_(x, torch.randn(3, 5, device=device), torch.rand(3, 5, device=device), 0.1, 0.01)
    assert x._version > v
    d = torch.randn(3, 5, device=device)
    v = d._version
    ops.project_(d, 0.1, "l2")
    assert d._version > v


@pytest.mark.parametrize("name", list(OPT_OPS))
def test_optimizer_steps_bump_the_version_counter(name, device):
    p = torch.randn(6, device=device)
    v = p._version
    OPT_OPS[name]([p], [torch.randn(6, device=device)], lr=0.1)
    assert p._version > v


def test_backward_through_a_value_saved_before_the_update_raises(device):
    w = torch.rand(3, 5, device=device, requires_grad=True)
    x = w * 1.0  # a non-leaf the op may update in place
    y = (x * x).sum()  # saves x for backward
    with torch.no_grad():
        ops.project_(x, 0.01)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_torch_optim_style_backward_after_advx_step_raises():
    p = torch.randn(4, requires_grad=True)
    opt = advx.optim.SGD([p], lr=0.1)
    loss = (p * p).sum()
    loss.backward(retain_graph=True)
    opt.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


# ---------------------------------------------------------------- kind 5: tensor lr

@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
@pytest.mark.parametrize("name", list(OPT_OPS))
def test_tensor_lr_values_are_checked(name, bad, device):
    p = torch.randn(6, device=device)
    before = p.clone()
    with pytest.raises(ValueError, match="lr must be non-negative and finite"):
        OPT_OPS[name]([p], [torch.randn(6, device=device)], lr=torch.tensor(bad, device=device))
    assert torch.equal(p, before)


def test_tensor_lr_rechecked_after_in_place_change():
    lr = torch.tensor(0.1)
    p = torch.randn(5)
    ops.sgd_step_([p], [torch.randn(5)], [], lr=lr)
    lr.fill_(-1.0)  # a scheduler writing the tensor in place
    with pytest.raises(ValueError, match="lr must be non-negative"):
        ops.sgd_step_([p], [torch.randn(5)], [], lr=lr)


def test_optimizer_class_with_bad_tensor_lr():
    p = torch.randn(5, requires_grad=True)
    lr = torch.tensor(0.01)
    opt = advx.optim.Adam([p], lr=lr)
    p.grad = torch.randn(5)
    opt.step()
    lr.fill_(-0.01)
    with pytest.raises(ValueError, match="lr"):
        opt.step()


# ---------------------------------------------------------------- kind 6: refused calls change nothing

@pytest.mark.parametrize("state", ["exp_avgs", "exp_avg_sqs"])
def test_expanded_state_refused_before_anything_is_written(state, device):
    p = torch.randn(5, device=device)
    steps = [torch.zeros((), device=device)]
    lists = {"exp_avgs": [torch.zeros(5, device=device)], "exp_avg_sqs": [torch.zeros(5, device=device)]}
    lists[state] = [torch.zeros(1, device=device).expand(5)]
    before = p.clone()
    with pytest.raises(ValueError, match=rf"{state}\[0\] has elements that share memory"):
        ops.adam_step_([p], [torch.randn(5, device=device)], lists["exp_avgs"], lists["exp_avg_sqs"], [], steps,
                       lr=0.1)
    assert torch.equal(p, before)
    assert float(steps[0]) == 0.0


def test_expanded_param_or_x_adv_refused(device):
    with pytest.raises(ValueError, match=r"params\[0\] has elements that share memory"):
        ops.sgd_step_([torch.zeros(1, device=device).expand(4)], [torch.randn(4, device=device)], [], lr=0.1)
    with pytest.raises(ValueError, match="x_adv has elements that share memory"):
        ops.pgd_step_(torch.zeros(1, 1, device=device).expand(3, 4), torch.randn(3, 4, device=device),
                      torch.zeros(3, 4, device=device), 0.1, 0.01)
    with pytest.raises(ValueError, match="delta has elements that share memory"):
        ops.project_(torch.ones(1, 1, device=device).expand(3, 4), 0.1)


# ---------------------------------------------------------------- kind 7: huge finite budgets

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_huge_budgets(norm, dtype, device):
    x = torch.rand(3, 8, device=device, dtype=dtype)
    grad = torch.randn(3, 8, device=device, dtype=dtype)
    grad[0, 0] = 0  # inf * sign(0) would be NaN
    for eps, alpha in [(1e39, 0.1), (0.1, 1e39), (1e300, 1e300),
                       (0.1, torch.full((3,), 1e39, dtype=torch.float64, device=device))]:
        out = x.clone()
        ops.pgd_step_(out, grad, x, eps, alpha, norm)
        assert torch.isfinite(out).all()
        assert out.min() >= 0 and out.max() <= 1
    d = torch.randn(3, 8, device=device, dtype=dtype)
    before = d.clone()
    ops.project_(d, 1e39, norm)
    assert torch.equal(d, before)


@pytest.mark.parametrize("optimizer", ["sign", "adam", "sgd", "rmsprop"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_attacks_with_huge_budgets_stay_finite(norm, optimizer):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x = torch.rand(4, 12)
    y = torch.tensor([0, 1, 2, 0])
    adv = advx.attacks.PGD(model, eps=1e39, steps=3, norm=norm, optimizer=optimizer, seed=0)(x, y)
    assert torch.isfinite(adv).all() and adv.min() >= 0 and adv.max() <= 1
    ball = advx.LpBall(center=x, eps=1e39, norm=norm, bounds=(0, 1))
    p = x.clone()
    ops.sgd_step_([p], [torch.randn_like(p)], [], lr=0.5, constraint=ball)
    assert torch.isfinite(p).all()


# ---------------------------------------------------------------- kind 10: meta and fake tensors

def test_meta_tensors_are_not_read():
    d = torch.empty(3, 4, device="meta")
    ops.project_(d, torch.full((3,), 0.1, device="meta"))
    ops.pgd_step_(d, torch.empty(3, 4, device="meta"), torch.empty(3, 4, device="meta"),
                  torch.tensor(0.1, device="meta"), torch.full((3,), 0.01, device="meta"), "l2")
    ball = advx.LpBall(eps=torch.full((3,), 0.1, device="meta"), norm="l2")
    assert ball.eps.device.type == "meta"
    p = torch.empty(3, 4, device="meta")
    ops.sgd_step_([p], [torch.empty(3, 4, device="meta")], [], lr=torch.tensor(0.1, device="meta"),
                  constraint=ball)


def test_fake_tensors_are_not_read():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        d = torch.empty(3, 4)
        ops.project_(d, torch.full((3,), 0.1))
        ball = advx.LpBall(eps=torch.full((3,), 0.1))
        ops.adam_step_([d], [torch.empty(3, 4)], [torch.empty(3, 4)], [torch.empty(3, 4)], [], [torch.zeros(())],
                       lr=torch.tensor(0.1), constraint=ball)


# ---------------------------------------------------------------- kind 11: budgets exact in every dtype

@pytest.mark.parametrize("dtype,norm,eps", [
    (torch.bfloat16, "linf", 0.03), (torch.bfloat16, "linf", 8 / 255), (torch.float16, "linf", 0.03),
    (torch.bfloat16, "l2", 0.5), (torch.float32, "linf", 0.03), (torch.float32, "linf", 8 / 255),
    (torch.float16, "l2", 0.5), (torch.float64, "l2", 0.5),
])
def test_attack_results_inside_the_budget_in_their_dtype(dtype, norm, eps):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 10)).to(dtype)
    x = torch.rand(256, 3, 4, 4).to(dtype)
    y = torch.randint(0, 10, (256,))
    for optimizer in ("sign", "adam"):
        adv = advx.attacks.PGD(model, eps, steps=5, norm=norm, optimizer=optimizer, seed=0)(x, y)
        d = (adv.double() - x.double()).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert float(size.max()) <= eps, (optimizer, float(size.max()))
        assert adv.min() >= 0 and adv.max() <= 1


def test_autocast_keeps_the_perturbation_in_float32():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 10))
    x = torch.rand(64, 3, 4, 4)
    y = torch.randint(0, 10, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = advx.attacks.PGD(model, 8 / 255, steps=5, seed=0).run(x, y)
    assert res.adv.dtype == torch.float32
    assert float((res.adv.double() - x.double()).abs().max()) <= 8 / 255
    # the steps are not lost to bfloat16 rounding: the perturbation reaches the budget
    assert float((res.adv - x).abs().max()) > 0.9 * 8 / 255
