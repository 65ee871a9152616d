"""advx.ops.edge_energy against advx.reference.edge_energy and the seed's module."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import advx
from advx.ops import edge_energy
from advx.reference import edge_energy as edge_energy_ref


class SeedMultiScaleEdgeEnergy(nn.Module):
    # Transcribed literally from seed 003 (course notes 8.4, "Optimizing inputs").
    def __init__(self):
        super(SeedMultiScaleEdgeEnergy, self).__init__()
        k = torch.exp(- torch.tensor([[-2., -1., 0., 1., 2.]])**2 / 2)
        k = (k.t() @ k).view(1, 1, 5, 5)
        self.register_buffer('gaussian_5x5', k / k.sum())

    def forward(self, x):
        u = x.view(-1, 1, x.size(2), x.size(3))
        result = 0.0
        while min(u.size(2), u.size(3)) > 5:
            blurry = F.conv2d(u, self.gaussian_5x5, padding = 2)
            result += (u - blurry).view(u.size(0), -1).pow(2).sum(1)
            u = F.avg_pool2d(u, kernel_size = 2, padding = 1)
        result = result.view(x.size(0), -1).sum(1)
        return result


SIZES = [(37, 53), (6, 6), (5, 200), (7, 7), (1, 1), (9, 11), (64, 6), (13, 300)]
FLOATS = [torch.float32, torch.float64]


def has_level(h, w):
    return min(h, w) > 5


def image(shape, dtype, device):
    # Image-like values with an offset, so residuals are smaller than the pixels.
    return (torch.rand(shape, dtype=torch.float64) + 0.25 * torch.randn(shape, dtype=torch.float64)).to(
        device=device, dtype=dtype)


def seed_energy(x):
    return SeedMultiScaleEdgeEnergy().to(device=x.device, dtype=x.dtype)(x.contiguous())


def grads(fn, x, grad_energy):
    x = x.detach().requires_grad_(True)
    energy = fn(x)
    if not energy.requires_grad:  # no level at all: the energy is a constant 0
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(energy, x, grad_energy)
    return g


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("batch,channels", [(1, 1), (1, 3), (3, 1), (3, 3)])
def test_forward_matches_reference_and_seed(device, dtype, size, batch, channels):
    x = image((batch, channels, *size), dtype, device)
    energy = edge_energy(x)
    assert energy.shape == (batch,) and energy.dtype == dtype and energy.device == x.device
    torch.testing.assert_close(energy, edge_energy_ref(x))
    if has_level(*size):
        torch.testing.assert_close(energy, seed_energy(x))
        assert (energy > 0).all()
    else:
        assert (energy == 0).all()


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_224(device, dtype, channels):
    x = image((1, channels, 224, 224), dtype, device)
    energy = edge_energy(x)
    torch.testing.assert_close(energy, edge_energy_ref(x))
    torch.testing.assert_close(energy, seed_energy(x))


def test_forward_large_image(device):
    # One big image: on several threads each level is split into many row bands.
    x = image((1, 1, 517, 389), torch.float64, device)
    torch.testing.assert_close(edge_energy(x), edge_energy_ref(x))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [
    (b, c, *size) for size in [(37, 53), (6, 6), (5, 200), (7, 7), (1, 1), (9, 11)] for b, c in [(1, 1), (3, 3)]
] + [(1, 3, 224, 224), (1, 1, 130, 70)])
def test_backward_matches_autograd_through_reference(device, dtype, shape):
    batch, _, *size = shape
    x = image(shape, dtype, device)
    grad_energy = torch.randn(batch, dtype=dtype, device=device)
    got = grads(edge_energy, x, grad_energy)
    assert got.shape == x.shape and got.dtype == dtype
    torch.testing.assert_close(got, grads(edge_energy_ref, x, grad_energy))
    if has_level(*size):
        assert got.abs().max() > 0


@pytest.mark.parametrize("layout", ["channels_last", "strided", "transposed"])
def test_layouts(device, layout):
    base = image((3, 4, 29, 41), torch.float64, device)
    if layout == "channels_last":
        x = base.to(memory_format=torch.channels_last)
        assert not x.is_contiguous()
    elif layout == "strided":
        x = image((3, 8, 29, 82), torch.float64, device)[:, ::2, :, ::2]
    else:
        x = image((3, 4, 41, 29), torch.float64, device).transpose(2, 3)
    assert not x.is_contiguous()
    dense = x.contiguous()
    torch.testing.assert_close(edge_energy(x), edge_energy_ref(dense))
    grad_energy = torch.randn(3, dtype=x.dtype, device=device)
    torch.testing.assert_close(grads(edge_energy, x, grad_energy), grads(edge_energy_ref, dense, grad_energy))


def test_expanded_grad_energy(device):
    # .sum().backward() hands the backward a stride-0 grad_energy.
    x = image((4, 2, 17, 19), torch.float64, device).requires_grad_(True)
    edge_energy(x).sum().backward()
    torch.testing.assert_close(x.grad, grads(edge_energy_ref, x, torch.ones(4, dtype=x.dtype, device=device)))


def test_empty(device):
    for shape in [(0, 3, 32, 32), (2, 0, 32, 32), (2, 3, 0, 32), (2, 3, 32, 0)]:
        x = torch.randn(shape, device=device, requires_grad=True)
        energy = edge_energy(x)
        assert energy.shape == (shape[0],)
        assert (energy == 0).all()
        energy.sum().backward()
        assert x.grad.shape == x.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_compute_in_float(device, dtype):
    x = image((2, 3, 37, 53), dtype, device)
    want = edge_energy_ref(x.float())
    got = edge_energy(x)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=0)
    grad_energy = torch.randn(2, device=device)
    want_grad = grads(edge_energy_ref, x.float(), grad_energy)
    got_grad = grads(edge_energy, x, grad_energy.to(dtype))
    assert got_grad.dtype == dtype
    tol = 2 ** -7 if dtype == torch.bfloat16 else 2 ** -10
    torch.testing.assert_close(got_grad.float(), want_grad, rtol=4 * tol, atol=4 * tol * want_grad.abs().max().item())


@pytest.mark.parametrize("shape", [(2, 2, 9, 11), (1, 1, 6, 13), (1, 2, 14, 7)])
def test_gradcheck(device, shape):
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(edge_energy, (x,))
    assert torch.autograd.gradgradcheck(edge_energy, (x,))


def test_double_backward_matches_reference(device):
    x = image((2, 3, 13, 17), torch.float64, device).requires_grad_(True)
    grad_energy = torch.rand(2, dtype=torch.float64, device=device)
    v = torch.randn_like(x)

    def hvp(fn):
        (g,) = torch.autograd.grad(fn(x), x, grad_energy, create_graph=True)
        return torch.autograd.grad((g * v).sum(), x)[0]

    torch.testing.assert_close(hvp(edge_energy), hvp(edge_energy_ref))


def test_opcheck(device):
    x = image((2, 3, 13, 17), torch.float32, device)
    torch.library.opcheck(torch.ops.advx.edge_energy.default, (x.requires_grad_(True),))
    grad_energy = torch.randn(2, device=device)
    torch.library.opcheck(torch.ops.advx.edge_energy_backward.default, (grad_energy, x.detach()))
    x_cl = image((1, 2, 30, 22), torch.float64, device).to(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.advx.edge_energy.default, (x_cl,))
    torch.library.opcheck(torch.ops.advx.edge_energy_backward.default,
                          (torch.randn(1, dtype=torch.float64, device=device), x_cl))


def test_compile_fullgraph_forward_and_backward(device):
    def loss(x, w):
        return (advx.EdgeEnergy(weight=0.5)(x) * w).sum()

    compiled = torch.compile(loss, fullgraph=True)
    x = image((2, 3, 23, 31), torch.float32, device)
    w = torch.rand(2, device=device)
    xe = x.clone().requires_grad_(True)
    xc = x.clone().requires_grad_(True)
    want = loss(xe, w)
    want.backward()
    got = compiled(xc, w)
    got.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(xc.grad, xe.grad)
    torch.testing.assert_close(want, 0.5 * (edge_energy_ref(x) * w).sum())


def test_module(device):
    x = image((3, 2, 20, 20), torch.float64, device)
    torch.testing.assert_close(advx.EdgeEnergy()(x), edge_energy_ref(x))
    torch.testing.assert_close(advx.EdgeEnergy(weight=3.0)(x), 3.0 * edge_energy_ref(x))
    assert "weight=3.0" in repr(advx.EdgeEnergy(weight=3.0))


def test_inputs_unchanged(device):
    x = image((2, 3, 21, 24), torch.float32, device).requires_grad_(True)
    before = x.detach().clone()
    grad_energy = torch.randn(2, device=device)
    ge_before = grad_energy.clone()
    (g,) = torch.autograd.grad(edge_energy(x), x, grad_energy)
    torch.ops.advx.edge_energy_backward.default(grad_energy, x.detach())
    assert torch.equal(x.detach(), before)
    assert torch.equal(grad_energy, ge_before)
    assert not torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("channels", [1, 3])
def test_deterministic_across_thread_counts(channels):
    # 2 images on 3-4 threads run in row bands, on 1-2 threads as whole images.
    x = image((2, channels, 224, 130), torch.float32, "cpu").requires_grad_(True)
    grad_energy = torch.randn(2)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in [1, 2, 3, 4]:
            torch.set_num_threads(n)
            energy = edge_energy(x)
            (g,) = torch.autograd.grad(energy, x, grad_energy)
            results.append((energy.detach(), g))
    finally:
        torch.set_num_threads(threads)
    for energy, g in results[1:]:
        assert torch.equal(energy, results[0][0])
        assert torch.equal(g, results[0][1])


def test_cuda_matches_cpu(device):
    if device != "cuda":
        pytest.skip("compares the CUDA kernels with the CPU kernels")
    for dtype in FLOATS:
        x = image((3, 3, 67, 45), dtype, "cpu")
        grad_energy = torch.randn(3, dtype=dtype)
        torch.testing.assert_close(edge_energy(x.cuda()).cpu(), edge_energy(x))
        torch.testing.assert_close(grads(edge_energy, x.cuda(), grad_energy.cuda()).cpu(),
                                   grads(edge_energy, x, grad_energy))


def test_cuda_deterministic(device):
    if device != "cuda":
        pytest.skip("run-to-run determinism of the CUDA reduction")
    x = image((4, 3, 224, 224), torch.float32, device).requires_grad_(True)
    grad_energy = torch.randn(4, device=device)
    first = edge_energy(x)
    (g1,) = torch.autograd.grad(first, x, grad_energy)
    for _ in range(3):
        energy = edge_energy(x)
        (g,) = torch.autograd.grad(energy, x, grad_energy)
        assert torch.equal(energy, first)
        assert torch.equal(g, g1)


@pytest.mark.parametrize("bad,error,match", [
    (torch.randn(3, 8, 8), ValueError, "x must have shape"),
    (torch.randn(1, 3, 8, 8, 2), ValueError, "x must have shape"),
    (torch.ones(1, 3, 8, 8, dtype=torch.int64), TypeError, "x must be a floating point"),
    ([[1.0]], TypeError, "x must be a torch.Tensor"),
])
def test_bad_input(bad, error, match):
    with pytest.raises(error, match=match):
        edge_energy(bad)


def test_bad_input_reaching_the_kernels():
    with pytest.raises(RuntimeError, match="x must have shape"):
        torch.ops.advx.edge_energy.default(torch.randn(3, 8, 8))
    with pytest.raises(RuntimeError, match="x must be a floating point"):
        torch.ops.advx.edge_energy.default(torch.ones(1, 1, 8, 8, dtype=torch.int32))
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match="grad_energy must have shape"):
        torch.ops.advx.edge_energy_backward.default(torch.ones(3), x)
    with pytest.raises(RuntimeError, match="grad_energy must be a floating point"):
        torch.ops.advx.edge_energy_backward.default(torch.ones(2, dtype=torch.int64), x)
