"""project_ and pgd_step_: fused kernels against advx.reference, opcheck, errors."""
import math

import pytest
import torch

import advx
from advx import ops, reference

SHAPES = [
    (1, 1),  # one element
    (3, 5),  # odd, not a multiple of 4
    (4, 3, 7, 9),  # image-shaped, odd spatial size
    (2, 1, 33),  # 33 = 4*8 + 1: vector body plus tail
    (4096, 784),  # many small samples
    (2, 3, 129, 130),  # few large samples (several reduction blocks each)
    (0, 3, 4),  # empty batch
    (5, 0),  # empty samples
]
DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def tol(dtype, norm):
    if dtype == torch.bfloat16:
        return dict(atol=1e-2, rtol=1.6e-2)
    if norm == "linf" and dtype == torch.float32:
        return dict(atol=0, rtol=0)  # bit for bit
    return {}


def make(shape, dtype, device, *, layout="contiguous"):
    x = torch.rand(shape, device=device).to(dtype)
    g = torch.randn(shape, device=device).to(dtype)
    xo = torch.rand(shape, device=device).to(dtype)
    if layout == "channels_last" and len(shape) == 4:
        x, g, xo = (t.contiguous(memory_format=torch.channels_last) for t in (x, g, xo))
    if layout == "transposed" and len(shape) >= 2:
        # non-contiguous views of the same logical values
        x, g, xo = (t.transpose(-1, -2).contiguous().transpose(-1, -2) for t in (x, g, xo))
    return x, g, xo


def budgets(batch, device, per_sample):
    if per_sample:
        return (torch.rand(batch, device=device) * 0.2 + 0.01, torch.rand(batch, device=device) * 0.05 + 0.001)
    return 8 / 255, 2 / 255


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("per_sample", [False, True])
def test_pgd_step_matches_reference(device, norm, dtype, shape, per_sample):
    x, g, xo = make(shape, dtype, device)
    eps, alpha = budgets(shape[0], device, per_sample)
    if norm == "l2" and not per_sample:
        eps, alpha = 0.5, 0.2
    g_before, xo_before = g.clone(), xo.clone()
    got = ops.pgd_step_(x.clone(), g, xo, eps, alpha, norm)
    want = reference.pgd_step_(x.clone(), g, xo, eps, alpha, norm)
    torch.testing.assert_close(got, want, **tol(dtype, norm))
    assert torch.equal(g, g_before) and torch.equal(xo, xo_before)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("per_sample", [False, True])
def test_project_matches_reference(device, norm, dtype, shape, per_sample):
    d = (torch.randn(shape, device=device) * 0.3).to(dtype)
    eps = budgets(shape[0], device, per_sample)[0] if per_sample else (0.1 if norm == "linf" else 1.0)
    got = ops.project_(d.clone(), eps, norm)
    want = reference.project_(d.clone(), eps, norm)
    torch.testing.assert_close(got, want, **tol(dtype, norm))


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
def test_strided_inputs(device, norm, layout):
    x, g, xo = make((3, 4, 9, 11), torch.float32, device, layout=layout)
    got = x.clone(memory_format=torch.preserve_format)
    ops.pgd_step_(got, g, xo, 0.1, 0.02, norm)
    want = reference.pgd_step_(x.contiguous(), g.contiguous(), xo.contiguous(), 0.1, 0.02, norm)
    torch.testing.assert_close(got, want, **tol(torch.float32, norm))
    # the caller's layout is kept (updated in place, not replaced)
    assert got.stride() == x.stride()
    d = g.clone(memory_format=torch.preserve_format)
    ops.project_(d, 0.3, norm)
    torch.testing.assert_close(d, reference.project_(g.contiguous(), 0.3, norm), **tol(torch.float32, norm))


def test_mixed_layouts(device):
    x, g, xo = make((2, 3, 5, 6), torch.float32, device)
    g_cl = g.contiguous(memory_format=torch.channels_last)
    got = ops.pgd_step_(x.clone(), g_cl, xo, 0.1, 0.03, "linf")
    want = reference.pgd_step_(x.clone(), g, xo, 0.1, 0.03, "linf")
    assert torch.equal(got, want)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_values_on_the_bounds(device, norm):
    # points exactly on the box and on the ball's surface stay where the reference puts them
    xo = torch.tensor([[0.0, 1.0, 0.5, 0.25]], device=device).repeat(3, 1)
    x = xo.clone()
    x[1] = torch.tensor([0.0, 1.0, 0.6, 0.15])
    x[2] = torch.tensor([0.1, 0.9, 0.4, 0.35])
    g = torch.tensor([[-1.0, 1.0, 0.0, 2.0]], device=device).repeat(3, 1)
    got = ops.pgd_step_(x.clone(), g, xo, 0.1, 0.1, norm)
    want = reference.pgd_step_(x.clone(), g, xo, 0.1, 0.1, norm)
    torch.testing.assert_close(got, want, **tol(torch.float32, norm))
    assert got.min() >= 0 and got.max() <= 1


def test_l2_zero_delta_stays_zero(device):
    d = torch.zeros(3, 10, device=device)
    d[1] = torch.randn(10)
    ops.project_(d, 0.5, "l2")
    assert torch.equal(d[0], torch.zeros(10, device=device)) and not d.isnan().any()
    torch.testing.assert_close(d[1].norm(), torch.tensor(0.5, device=device))


def test_l2_zero_grad(device):
    x, _, xo = make((2, 12), torch.float32, device)
    g = torch.zeros_like(x)
    got = ops.pgd_step_(x.clone(), g, xo, 0.5, 0.1, "l2")
    torch.testing.assert_close(got, reference.pgd_step_(x.clone(), g, xo, 0.5, 0.1, "l2"))
    assert not got.isnan().any()


def test_iterates_stay_in_ball_and_box(device):
    x, _, xo = make((16, 50), torch.float32, device)
    x = xo.clone()
    for norm, eps in [("linf", 0.05), ("l2", 0.3)]:
        y = x.clone()
        for _ in range(20):
            ops.pgd_step_(y, torch.randn_like(y), xo, eps, eps / 4, norm)
            d = (y - xo).flatten(1)
            size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
            assert (size <= eps * (1 + 1e-5)).all()
            assert y.min() >= 0 and y.max() <= 1


def test_bounds_none_disables_box(device):
    x, g, xo = make((4, 7), torch.float32, device)
    x, xo = x * 3 - 1, xo * 3 - 1  # outside [0, 1]
    got = ops.pgd_step_(x.clone(), g, xo, 0.2, 0.05, "linf", bounds=None)
    assert torch.equal(got, reference.pgd_step_(x.clone(), g, xo, 0.2, 0.05, "linf", bounds=None))
    assert got.min() < 0


def test_per_sample_budget_equals_separate_calls(device):
    x, g, xo = make((3, 2, 5, 5), torch.float32, device)
    eps = torch.tensor([0.01, 0.1, 0.3], device=device)
    for norm in ("linf", "l2"):
        together = ops.pgd_step_(x.clone(), g, xo, eps, 0.05, norm)
        for i in range(3):
            alone = ops.pgd_step_(x[i:i + 1].clone(), g[i:i + 1], xo[i:i + 1], float(eps[i]), 0.05, norm)
            torch.testing.assert_close(together[i:i + 1], alone)


# ---- opcheck and torch.compile ------------------------------------------------

def _opcheck_cases(device):
    for norm in ("linf", "l2"):
        x, g, xo = make((3, 2, 5, 7), torch.float32, device)
        eps = torch.full((3,), 0.1, device=device)
        alpha = torch.full((3,), 0.02, device=device)
        yield torch.ops.advx.pgd_step_.default, (x, g, xo, eps, alpha, norm, 0.0, 1.0)
        yield torch.ops.advx.project_.default, (g.clone(), eps, norm)


def test_opcheck(device):
    for op, args in _opcheck_cases(device):
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph(device):
    x, g, xo = make((4, 3, 6, 6), torch.float32, device)

    def attack_step(x_adv, grad, x_orig):
        ops.pgd_step_(x_adv, grad, x_orig, 0.1, 0.01, "l2")
        ops.project_(x_adv, 0.9, "linf")
        return x_adv * 2

    compiled = torch.compile(attack_step, fullgraph=True, backend="aot_eager")
    a, b = x.clone(), x.clone()
    torch.testing.assert_close(compiled(a, g, xo), attack_step(b, g, xo))
    torch.testing.assert_close(a, b)


# ---- bad input ------------------------------------------------------------------

def test_errors_name_the_argument():
    x, g, xo = make((2, 5), torch.float32, "cpu")
    snapshot = (x.clone(), g.clone(), xo.clone())
    cases = [
        (dict(grad=g.double()), TypeError, "grad"),
        (dict(x_orig=xo[:1]), ValueError, "x_orig"),
        (dict(eps=0.0), ValueError, "eps"),
        (dict(eps=-1.0), ValueError, "eps"),
        (dict(eps=math.nan), ValueError, "eps"),
        (dict(alpha=math.inf), ValueError, "alpha"),
        (dict(eps=torch.tensor([0.1, math.nan])), ValueError, "eps"),
        (dict(eps=torch.tensor([0.1, 0.2, 0.3])), ValueError, "eps"),
        (dict(eps="big"), TypeError, "eps"),
        (dict(norm="l1"), ValueError, "norm"),
        (dict(bounds=(1.0, 0.0)), ValueError, "bounds"),
        (dict(bounds=(0.0,)), TypeError, "bounds"),
        (dict(grad=g.long()), TypeError, "grad"),
    ]
    for override, exc, name in cases:
        args = dict(x_adv=x, grad=g, x_orig=xo, eps=0.1, alpha=0.01, norm="linf", bounds=(0.0, 1.0))
        args.update(override)
        with pytest.raises(exc, match=name):
            ops.pgd_step_(**args)
    for t, s in zip((x, g, xo), snapshot):
        assert torch.equal(t, s)  # nothing changed by a rejected call
    with pytest.raises(ValueError, match="delta"):
        ops.project_(torch.tensor(1.0), 0.1, "linf")
    with pytest.raises(TypeError, match="delta"):
        ops.project_([1.0, 2.0], 0.1, "linf")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_mixed_devices_rejected():
    x, g, xo = make((2, 5), torch.float32, "cpu")
    with pytest.raises(ValueError, match="grad"):
        ops.pgd_step_(x, g.cuda(), xo, 0.1, 0.01)
    with pytest.raises(ValueError, match="eps"):
        ops.pgd_step_(x, g, xo, torch.full((2,), 0.1, device="cuda"), 0.01)


def test_raw_op_checks_too():
    # torch.ops.advx.* called directly (bypassing Python checks) still refuses bad input
    x, g, xo = make((2, 5), torch.float32, "cpu")
    eps = torch.full((2,), 0.1)
    with pytest.raises(RuntimeError, match="norm"):
        torch.ops.advx.pgd_step_(x, g, xo, eps, eps, "l3", 0.0, 1.0)
    with pytest.raises(RuntimeError, match="grad"):
        torch.ops.advx.pgd_step_(x, g[:1], xo, eps, eps, "linf", 0.0, 1.0)
    with pytest.raises(RuntimeError, match="eps"):
        torch.ops.advx.project_(x, eps[:1], "linf")
    with pytest.raises(RuntimeError, match="eps"):
        torch.ops.advx.project_(x, eps.double(), "linf")


def test_build_info():
    info = advx.build_info()
    assert set(info) >= {"torch_version", "cuda", "cuda_archs", "openmp"}
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
