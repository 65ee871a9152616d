"""CUDA-only checks of project_/pgd_step_: CPU-vs-CUDA parity, graph capture, indexing
past 2^31 bytes, determinism, a second device. Skipped without a GPU."""
import pytest
import torch

from advx import ops, reference

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def _inputs(shape, dtype, device="cuda"):
    x = torch.rand(shape, device=device).to(dtype)
    return x, torch.randn(shape, device=device).to(dtype), torch.rand(shape, device=device).to(dtype)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (4096, 784), (8, 3, 64, 65), (2, 5, 1001)], ids=str)
def test_cuda_matches_cpu_kernel(dtype, norm, shape):
    x, g, xo = _inputs(shape, dtype)
    eps = torch.rand(shape[0], device="cuda") * 0.3 + 0.01
    got = ops.pgd_step_(x.clone(), g, xo, eps, 0.05, norm).cpu()
    cpu_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    want = ops.pgd_step_(x.cpu().to(cpu_dtype), g.cpu().to(cpu_dtype), xo.cpu().to(cpu_dtype),
                         eps.cpu(), 0.05, norm).to(dtype)
    exact = norm == "linf" and dtype in (torch.float32, torch.float64)
    torch.testing.assert_close(got, want, **({"atol": 0, "rtol": 0} if exact else {}))


@cuda
def test_misaligned_views_take_the_scalar_path():
    base = torch.rand(4 * 37 + 1, device="cuda")
    x = base[1:].view(4, 37)  # 4-byte offset: not 16-byte aligned
    g, xo = torch.randn_like(x), torch.rand_like(x)
    want = reference.pgd_step_(x.clone(), g, xo, 0.1, 0.01, "l2")
    torch.testing.assert_close(ops.pgd_step_(x, g, xo, 0.1, 0.01, "l2"), want)


@cuda
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_l2_reduction_is_deterministic(norm):
    x, g, xo = _inputs((8, 3, 256, 256), torch.float32)
    outs = [ops.pgd_step_(x.clone(), g, xo, 1.0, 0.5, norm) for _ in range(3)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@cuda
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_cuda_graph_capture_replay(norm):
    x, g, xo = _inputs((16, 3, 32, 32), torch.float32)
    eps = torch.full((16,), 0.1, device="cuda")
    alpha = torch.full((16,), 0.02, device="cuda")
    static = x.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ops.pgd_step_(static, g, xo, eps, alpha, norm)  # warm-up outside the graph
    torch.cuda.current_stream().wait_stream(s)
    static.copy_(x)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.pgd_step_(static, g, xo, eps, alpha, norm)
    static.copy_(x)
    eager = x.clone()
    for _ in range(3):
        graph.replay()
        ops.pgd_step_(eager, g, xo, eps, alpha, norm)
    torch.cuda.synchronize()
    torch.testing.assert_close(static, eager, atol=0, rtol=0)


@cuda
def test_second_device():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    x, g, xo = _inputs((4, 100), torch.float32, device="cuda:1")
    want = reference.pgd_step_(x.clone(), g, xo, 0.1, 0.01, "l2")
    torch.testing.assert_close(ops.pgd_step_(x, g, xo, 0.1, 0.01, "l2"), want)


@cuda
def test_more_than_2_31_bytes():
    n = (1 << 31) // 4 + 4099  # > 2^31 bytes of float32 per tensor
    free, _ = torch.cuda.mem_get_info()
    if free < 4 * 4 * n + (1 << 30):
        pytest.skip("not enough GPU memory")
    x = torch.rand(2, n // 2, device="cuda")
    g = torch.randn_like(x)
    xo = torch.rand_like(x)
    for norm in ("linf", "l2"):
        got = ops.pgd_step_(x.clone(), g, xo, 0.5, 0.01, norm)
        # check the far end of the tensor, where 32-bit indices would have wrapped
        tail = slice(-5000, None)
        want = reference.pgd_step_(x[:, tail].clone(), g[:, tail], xo[:, tail], 0.5, 0.01, "linf") if norm == "linf" else None
        if want is not None:
            torch.testing.assert_close(got[:, tail], want, atol=0, rtol=0)
        else:
            full = reference.pgd_step_(x.clone(), g, xo, 0.5, 0.01, norm)
            torch.testing.assert_close(got[:, tail], full[:, tail])
            del full
        del got
