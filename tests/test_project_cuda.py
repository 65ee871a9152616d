"""CUDA-only checks of project_/pgd_step_: CPU-vs-CUDA parity, graph capture, indexing
past 2^31 elements, determinism, a second device. Skipped without a GPU."""
import pytest
import torch

import advx
from advx import ops, reference

cuda = pytest.mark.skipif(not (torch.cuda.is_available() and advx.build_info()["cuda"]),
                          reason="needs a GPU and advx built with CUDA")


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
    # CUDA is built with --fmad=false (CPU: -ffp-contract=off), so the elementwise L-inf
    # step is the same bits on both; L2 reduces in a different order: assert_close.
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


# ------------------------------------------------------------------ > 2^31 elements

# Two rows of 2^30 + 1024 elements: 2^31 + 2048 in all, so flat indices past 2^31 exist
# (a 32-bit element index wraps there); the row length is a multiple of 8, so the
# 16-byte vector path of half types runs. Three such tensors are ~12.9 GB.
BIG_ROWS, BIG_N = 2, (1 << 30) + 1024
# Where to look: both row ends, and around flat index 2^31 (row 1, column 2^31 - n).
_EDGE = 4096


def _big_windows():
    wrap = (1 << 31) - BIG_N
    return [(0, BIG_N - _EDGE, BIG_N), (1, wrap - _EDGE, wrap + _EDGE), (1, BIG_N - _EDGE, BIG_N)]


def _row_sums_of_squares(fn, rows, n, chunk=1 << 26):
    """Per-row sum of fn(row, lo, hi)**2 over column chunks, accumulated in float64."""
    out = torch.zeros(rows, dtype=torch.float64, device="cuda")
    for b in range(rows):
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            out[b] += fn(b, lo, hi).double().square().sum()
    return out


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_more_than_2_31_elements(dtype):
    torch.cuda.empty_cache()
    need = 3 * BIG_ROWS * BIG_N * 2 + (3 << 30)  # three tensors plus chunked temporaries
    free, _ = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    # the big tensors live only in `big`, emptied at the end: a failing assertion keeps
    # this frame alive in the traceback, and must not keep ~13 GB with it
    big = {}
    try:
        _check_big(big, dtype)
    finally:
        big.clear()
        torch.cuda.empty_cache()


def _check_big(big, dtype):
    ulp = dict(atol=2e-3, rtol=2e-3) if dtype == torch.float16 else dict(atol=1.6e-2, rtol=1.6e-2)
    big["x"] = torch.empty(BIG_ROWS, BIG_N, dtype=dtype, device="cuda")
    big["g"] = torch.empty_like(big["x"])
    big["xo"] = torch.empty_like(big["x"])
    gen = torch.Generator(device="cuda")

    def fill(*names):  # the same values every time: a refill undoes an in-place op
        gen.manual_seed(1234)
        for name in names:
            t = big[name]
            t.normal_(generator=gen) if name == "g" else t.uniform_(0, 1, generator=gen)

    def windows(name):
        return [big[name][b, lo:hi].float() for b, lo, hi in _big_windows()]

    def row_norms(fn):
        return _row_sums_of_squares(fn, BIG_ROWS, BIG_N).sqrt()

    def check(name, want, before, exact):
        for (b, lo, hi), got, w, old in zip(_big_windows(), windows(name), want, before):
            assert not torch.equal(got, old), f"row {b} columns [{lo}, {hi}) were not written"
            tol = dict(atol=0, rtol=0) if exact else ulp
            torch.testing.assert_close(got, w.to(dtype).float(), **tol,
                                       msg=lambda m: f"row {b} columns [{lo}, {hi}): {m}")

    # pgd_step_ linf: per element, so the reference on the windows alone is exact
    fill("x", "g", "xo")
    xs, gs, os = windows("x"), windows("g"), windows("xo")
    want = [reference.pgd_step_(a.clone(), b, c, 0.05, 0.01, "linf") for a, b, c in zip(xs, gs, os)]
    ops.pgd_step_(big["x"], big["g"], big["xo"], 0.05, 0.01, "linf")
    check("x", want, xs, exact=True)

    # pgd_step_ l2: the norms of g and of the stepped delta over whole rows (float64 sums
    # of the float32 values the kernel computes); eps = half the delta norm: scale 1/2
    fill("x", "g", "xo")
    x, g, xo = big["x"], big["g"], big["xo"]
    alpha = 50.0
    gn = (row_norms(lambda b, lo, hi: g[b, lo:hi].float()) + 1e-10).float()
    dnorm = row_norms(lambda b, lo, hi: (x[b, lo:hi].float() + alpha * (g[b, lo:hi].float() / gn[b]))
                      - xo[b, lo:hi].float())
    del x, g, xo
    eps = (0.5 * dnorm).float()
    scale = torch.clamp(eps.double() / dnorm, max=1.0).float()
    xs, gs, os = windows("x"), windows("g"), windows("xo")
    want = [torch.clamp(o + ((a + alpha * (gg / gn[b])) - o) * scale[b], 0, 1)
            for (b, _, _), a, gg, o in zip(_big_windows(), xs, gs, os)]
    ops.pgd_step_(big["x"], big["g"], big["xo"], eps, alpha, "l2")
    check("x", want, xs, exact=False)
    del big["x"], big["xo"]  # project_ works on g alone

    # project_ linf, then l2 with eps = a quarter of each row's norm
    fill("g")
    gs = windows("g")
    ops.project_(big["g"], 0.5, "linf")
    check("g", [torch.clamp(a, -0.5, 0.5) for a in gs], gs, exact=True)
    fill("g")
    norm = row_norms(lambda b, lo, hi: big["g"][b, lo:hi].float())
    eps = (0.25 * norm).float()
    scale = torch.clamp(eps.double() / norm, max=1.0).float()
    gs = windows("g")
    ops.project_(big["g"], eps, "l2")
    check("g", [a * scale[b] for (b, _, _), a in zip(_big_windows(), gs)], gs, exact=False)
