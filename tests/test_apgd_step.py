"""advx.ops.apgd_step_: the fused APGD iteration against advx.reference over devices,
dtypes, norms and odd shapes; the budget in every dtype; opcheck; bad input."""
import pytest
import torch

import advx
from advx import ops, reference

NORMS = ["linf", "l2", "l1"]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SHAPES = [(1, 1), (3, 7), (5, 3, 4, 5), (2, 3, 33, 31), (0, 4), (4, 0), (64, 257)]
EPS = {"linf": 0.06, "l2": 0.8, "l1": 6.0}


def tol(dtype):
    if dtype in (torch.bfloat16, torch.float16):  # the reference rounds every intermediate
        return dict(atol=3e-2, rtol=3e-2)
    return dict(atol=2e-6, rtol=2e-6) if dtype == torch.float32 else dict(atol=1e-8, rtol=1e-8)


def case(shape, dtype, device, norm, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=gen)
    x = (x0 + 0.1 * torch.randn(shape, generator=gen)).clamp(0, 1)
    x_prev = (x0 + 0.1 * torch.randn(shape, generator=gen)).clamp(0, 1)
    g = torch.randn(shape, generator=gen)
    if norm == "l1" and g.numel():  # the sparse direction the L1 attack passes (never all zero)
        top = g.abs().reshape(shape[0], -1).amax(1).reshape(-1, *([1] * (len(shape) - 1)))
        g = g * (g.abs() >= 0.5 * top)
    eps = EPS[norm] * (0.5 + torch.rand(shape[0], generator=gen))
    step = 2 * eps
    to = dict(device=device, dtype=dtype)
    return x.to(**to), x_prev.to(**to), g.to(**to), x0.to(**to), eps.to(device), step.to(device)


def sizes(z, c, norm):
    d = (z.double() - c.double()).reshape(z.shape[0], -1)
    if d.shape[1] == 0:
        return d.sum(1)
    return {"linf": lambda: d.abs().amax(1), "l2": lambda: torch.linalg.vector_norm(d, dim=1),
            "l1": lambda: d.abs().sum(1)}[norm]()


@pytest.mark.parametrize("alpha", [1.0, 0.75])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference_and_stays_inside(device, shape, dtype, norm, alpha):
    x, xp, g, x0, eps, step = case(shape, dtype, device, norm)
    before = [t.clone() for t in (g, x0, eps, step)]
    got, got_prev = x.clone(), xp.clone()
    want, want_prev = x.clone(), xp.clone()
    ops.apgd_step_(got, got_prev, g, x0, eps, step, alpha, norm)
    reference.apgd_step_(want, want_prev, g, x0, eps, step, alpha, norm)
    torch.testing.assert_close(got, want, **tol(dtype))
    assert torch.equal(got_prev, x)  # the previous iterate is the old x, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(before, (g, x0, eps, step)))  # inputs untouched
    if got.numel():
        assert bool((sizes(got, x0, norm) <= eps.double()).all())
        assert float(got.double().min()) >= 0 and float(got.double().max()) <= 1
        assert got[0].numel() < 7 or not torch.equal(got, x)  # a step was taken


@pytest.mark.parametrize("norm", NORMS)
def test_float32_linf_is_the_reference_bit_for_bit(device, norm):
    x, xp, g, x0, eps, step = case((16, 3, 9, 11), torch.float32, device, norm, seed=3)
    got, want = x.clone(), x.clone()
    ops.apgd_step_(got, xp.clone(), g, x0, eps, step, 0.75, norm)
    reference.apgd_step_(want, xp.clone(), g, x0, eps, step, 0.75, norm)
    if norm == "linf":
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_strided_inputs(device, norm, layout):
    x, xp, g, x0, eps, step = case((4, 3, 8, 6), torch.float32, device, norm, seed=1)

    def strided(t):
        if layout == "channels_last":
            return t.contiguous(memory_format=torch.channels_last)
        if layout == "transposed":
            return t.transpose(2, 3).contiguous().transpose(2, 3)
        return torch.cat([t, t], dim=3)[..., :6]  # a view with gaps

    got, got_prev = strided(x.clone()), strided(xp.clone())
    ops.apgd_step_(got, got_prev, strided(g), strided(x0), eps, step, 0.75, norm)
    want, want_prev = x.clone(), xp.clone()
    reference.apgd_step_(want, want_prev, g, x0, eps, step, 0.75, norm)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=2e-6)
    assert torch.equal(got_prev, x)


@pytest.mark.parametrize("norm", NORMS)
def test_many_steps_follow_the_reference(device, norm):
    """Thirty iterations in float64 with the published schedule (alpha 1, then 0.75),
    a fresh gradient each time: the kernel and the reference stay together."""
    x, xp, _, x0, eps, step = case((6, 2, 5, 5), torch.float64, device, norm, seed=7)
    a, a_prev, b, b_prev = x.clone(), x.clone(), x.clone(), x.clone()
    gen = torch.Generator().manual_seed(11)
    for i in range(30):
        g = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(device)
        if norm == "l1":
            g = g * (g.abs() > 1.5)
        alpha = 1.0 if i == 0 else 0.75
        ops.apgd_step_(a, a_prev, g, x0, eps, step, alpha, norm)
        reference.apgd_step_(b, b_prev, g, x0, eps, step, alpha, norm)
    torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)
    assert bool((sizes(a, x0, norm) <= eps.double()).all())


@pytest.mark.parametrize("norm", NORMS)
def test_zero_gradient_leaves_a_still_point(device, norm):
    x, _, g, x0, eps, step = case((3, 10), torch.float32, device, norm)
    x = x0.clone()  # at the center, no momentum, no gradient: nothing moves
    out = ops.apgd_step_(x.clone(), x.clone(), torch.zeros_like(g), x0, eps, step, 0.75, norm)
    assert torch.equal(out, x)


@pytest.mark.parametrize("norm", NORMS)
def test_no_box_and_large_budget(device, norm):
    x, xp, g, x0, eps, step = case((5, 40), torch.float32, device, norm, seed=2)
    got, want = x.clone(), x.clone()
    ops.apgd_step_(got, xp.clone(), g, x0, 1e3, 0.5, 0.75, norm, bounds=None)
    reference.apgd_step_(want, xp.clone(), g, x0, 1e3, 0.5, 0.75, norm, bounds=None)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=2e-6)


def test_large_sample(device):
    shape = (2, 3, 224, 224)
    for norm in NORMS:
        x, xp, g, x0, eps, step = case(shape, torch.float32, device, norm, seed=5)
        got, want = x.clone(), x.clone()
        ops.apgd_step_(got, xp.clone(), g, x0, eps * 20, step, 0.75, norm)
        reference.apgd_step_(want, xp.clone(), g, x0, eps * 20, step, 0.75, norm)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", NORMS)
def test_opcheck(device, norm):
    x, xp, g, x0, eps, step = case((4, 3, 5), torch.float32, device, norm)
    math = advx._validate.budget_tensor
    torch.library.opcheck(torch.ops.advx.apgd_step_.default,
                          (x, xp, g, x0, math(eps, "eps", x), math(step, "step_size", x), 0.75, norm, 0.0, 1.0))


def test_bad_input_names_the_argument():
    x, xp, g, x0, eps, step = case((3, 5), torch.float32, "cpu", "linf")
    with pytest.raises(ValueError, match="norm"):
        ops.apgd_step_(x, xp, g, x0, eps, step, 0.75, "l3")
    with pytest.raises(ValueError, match="alpha"):
        ops.apgd_step_(x, xp, g, x0, eps, step, 1.5)
    with pytest.raises(ValueError, match="x_prev has shape"):
        ops.apgd_step_(x, xp[:2], g, x0, eps, step)
    with pytest.raises(TypeError, match="grad has dtype"):
        ops.apgd_step_(x, xp, g.double(), x0, eps, step)
    with pytest.raises(ValueError, match="x_prev shares memory"):
        ops.apgd_step_(x, x, g, x0, eps, step)
    with pytest.raises(ValueError, match="step_size"):
        ops.apgd_step_(x, xp, g, x0, eps, -1.0)
    with pytest.raises(ValueError, match="x_adv has elements that share memory"):
        ops.apgd_step_(x[:1].expand(3, 5), xp, g, x0, eps, step)
    with pytest.raises(ValueError, match="alpha"):
        torch.ops.advx.apgd_step_.default(x, xp, g, x0, advx._validate.budget_tensor(eps, "eps", x),
                                          advx._validate.budget_tensor(step, "s", x), float("nan"), "linf", 0.0, 1.0)
    # a refused call changed nothing
    assert torch.equal(x, case((3, 5), torch.float32, "cpu", "linf")[0])


def test_inputs_that_alias_the_outputs(device):
    """x_orig that is x_adv itself (a zero-radius start) and a grad that overlaps x_prev:
    read from copies, the same result as separate tensors."""
    x, xp, g, x0, eps, step = case((4, 9), torch.float32, device, "l2")
    want, want_prev = x.clone(), xp.clone()
    reference.apgd_step_(want, want_prev, g, x.clone(), eps, step, 0.75, "l2")
    got, got_prev = x.clone(), xp.clone()
    ops.apgd_step_(got, got_prev, g, got, eps, step, 0.75, "l2")
    torch.testing.assert_close(got, want)
    buf = torch.cat([xp.reshape(-1), g.reshape(-1)]).clone()
    prev_view, grad_view = buf[:36].view(4, 9), buf[36:].view(4, 9)
    got = x.clone()
    ops.apgd_step_(got, prev_view, grad_view, x0, eps, step, 0.75, "l2")
    want = x.clone()
    reference.apgd_step_(want, xp.clone(), g, x0, eps, step, 0.75, "l2")
    torch.testing.assert_close(got, want)


cuda = pytest.mark.skipif(not (torch.cuda.is_available() and advx.build_info()["cuda"]),
                          reason="needs a GPU and advx built with CUDA")


@cuda
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_cpu_kernel(norm, dtype):
    x, xp, g, x0, eps, step = case((33, 3, 17, 19), dtype, "cpu", norm, seed=4)
    got = ops.apgd_step_(x.cuda(), xp.cuda(), g.cuda(), x0.cuda(), eps.cuda(), step.cuda(), 0.75, norm).cpu()
    want = ops.apgd_step_(x.clone(), xp.clone(), g, x0, eps, step, 0.75, norm)
    exact = norm == "linf" and dtype in (torch.float32, torch.float64)
    torch.testing.assert_close(got, want, **({"atol": 0, "rtol": 0} if exact else tol(dtype)))


@cuda
@pytest.mark.parametrize("norm", NORMS)
def test_cuda_graph_capture_replay(norm):
    x, xp, g, x0, eps, step = case((16, 3, 32, 32), torch.float32, "cuda", norm)
    eps_b, step_b = advx._validate.budget_tensor(eps, "eps", x), advx._validate.budget_tensor(step, "s", x)
    static, static_prev = x.clone(), xp.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        torch.ops.advx.apgd_step_.default(static.clone(), static_prev.clone(), g, x0, eps_b, step_b, 0.75, norm, 0.0, 1.0)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        torch.ops.advx.apgd_step_.default(static, static_prev, g, x0, eps_b, step_b, 0.75, norm, 0.0, 1.0)
    static.copy_(x)
    static_prev.copy_(xp)
    graph.replay()
    want, want_prev = x.clone(), xp.clone()
    ops.apgd_step_(want, want_prev, g, x0, eps, step, 0.75, norm)
    assert torch.equal(static, want) and torch.equal(static_prev, want_prev)
