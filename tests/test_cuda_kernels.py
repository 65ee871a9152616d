"""GPU checks of the CUDA kernels that the parity suites do not reach: the optimizers'
chunk-table rollover (> 24 tensors, a tensor > 320 blocks of 65536 elements),
misaligned views (the scalar path), half types under every constraint, L2 balls whose
samples span many reduction blocks, CUDA-graph capture of the optimizers and of
edge_energy, determinism of the optimizer L2 path, and a non-default stream. Every
result is compared with advx.reference (plain PyTorch), run in float32 for half types
and rounded where advx rounds. Skipped without a GPU or when advx was built without
CUDA; the expanded-radius tests at the end run on the CPU too (`device`)."""
import math

import pytest
import torch
from torch.testing import assert_close

import advx
from advx import ops, reference
from advx.constraints import Constraint

HAVE_CUDA = torch.cuda.is_available() and advx.build_info()["cuda"]
cuda_only = pytest.mark.skipif(not HAVE_CUDA, reason="needs a GPU and advx built with CUDA")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DTYPE_IDS = ["f32", "f64", "f16", "bf16"]
HALF = (torch.float16, torch.bfloat16)
RULES = ["sgd_step_", "adagrad_step_", "rmsprop_step_", "adam_step_"]
# positions of the state lists (compared, rounded like the params) and of the step counters
STATE_LISTS = {"sgd_step_": (2,), "adagrad_step_": (2,), "rmsprop_step_": (2, 3, 4), "adam_step_": (2, 3, 4)}
STEPS_LIST = {"sgd_step_": None, "adagrad_step_": 3, "rmsprop_step_": 5, "adam_step_": 5}


def tol(dtype) -> dict:
    """float32/float64: torch.testing's defaults; half types: about two units in the last
    place (advx and the float32 reference round the same float32 value, or a neighbour)."""
    if dtype == torch.float16:
        return dict(rtol=2e-3, atol=2e-3)
    if dtype == torch.bfloat16:
        return dict(rtol=1.6e-2, atol=1.6e-2)
    return {}


def math_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def ref_copy(t):
    """The reference's copy of a tensor: in the math dtype (half types run in float32)."""
    return None if t is None else t.to(math_dtype(t.dtype), copy=True)


def generator(device, seed):
    return torch.Generator(device=device).manual_seed(seed)


def rand_like_shape(shape, gen, dtype, device, *, scale=1.0, positive=False):
    t = torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * scale
    return (t.abs() if positive else t).to(dtype)


def batch_of(shape) -> int:
    return shape[0] if len(shape) else 1


def misaligned(t, offset=1):
    """A copy of t that starts `offset` elements into a buffer: not 16-byte aligned."""
    buf = torch.empty(t.numel() + offset, dtype=t.dtype, device=t.device)
    view = buf[offset:].view(t.shape)
    view.copy_(t)
    return view


class PerParamBall(Constraint):
    """A ball with its own centers and [B] radii for every parameter of the call (LpBall
    shares one eps), so each tensor of a call reads different per-sample radii."""

    def __init__(self, centers, radii, norm, lo=-math.inf, hi=math.inf):
        self.centers, self.radii, self.norm, self.lo, self.hi = list(centers), list(radii), norm, lo, hi

    def kernel_args(self, params, positions=None):
        return list(self.centers), list(self.radii), self.norm, self.lo, self.hi

    def for_reference(self):
        return PerParamBall([ref_copy(c) for c in self.centers], self.radii, self.norm, self.lo, self.hi)


def make_ball(params, norm, gen, *, center=True, lo=-1.5, hi=1.5, radius=(0.05, 0.45)):
    """A PerParamBall around random centers with random per-sample radii in `radius`."""
    device, dtype = params[0].device, params[0].dtype
    centers = [rand_like_shape(p.shape, gen, dtype, device) for p in params] if center else []
    radii = [torch.rand(batch_of(p.shape), generator=gen, device=device, dtype=math_dtype(dtype))
             * (radius[1] - radius[0]) + radius[0] for p in params]
    return PerParamBall(centers, radii, norm, lo, hi)


def rule_inputs(name, shapes, dtype, device, gen):
    """(lists, kwargs) for one optimizer op with every state in use (momentum, centered,
    amsgrad), weight decay, an lr tensor, GradScaler's grad_scale/found_inf tensors, and
    for SGD some new momentum buffers (None: the kernel's first-step path)."""
    params = [rand_like_shape(s, gen, dtype, device) for s in shapes]

    def like(**kw):
        return [rand_like_shape(p.shape, gen, dtype, device, **kw) for p in params]

    steps = [torch.tensor(float(2 + i % 3), device=device) for i in range(len(params))]
    lr = {"sgd_step_": 0.05, "adagrad_step_": 0.1, "rmsprop_step_": 0.01, "adam_step_": 0.01}[name]
    common = dict(lr=torch.tensor(lr, device=device), weight_decay=0.01,
                  grad_scale=torch.tensor(2.0, device=device), found_inf=torch.tensor(0.0, device=device))
    grads = like()
    if name == "sgd_step_":
        bufs = like()
        for i in range(0, len(bufs), 3):
            bufs[i] = None
        return [params, grads, bufs], dict(momentum=0.9, dampening=0.1, nesterov=False, maximize=True, **common)
    if name == "adagrad_step_":
        return [params, grads, like(positive=True), steps], dict(lr_decay=0.01, eps=1e-10, maximize=False, **common)
    if name == "rmsprop_step_":
        sq = like(positive=True)
        return [params, grads, sq, [0.1 * s for s in sq], like(scale=0.1), steps], dict(
            alpha=0.9, eps=1e-8, momentum=0.9, centered=True, maximize=False, **common)
    sq = like(positive=True)
    return [params, grads, like(scale=0.1), sq, [1.5 * s for s in sq], steps], dict(
        beta1=0.9, beta2=0.99, eps=1e-8, amsgrad=True, decoupled_weight_decay=True, maximize=False, **common)


def reference_lists(name, lists):
    steps_at = STEPS_LIST[name]
    return [[s.clone() for s in lst] if j == steps_at else [ref_copy(t) for t in lst]
            for j, lst in enumerate(lists)]


def run_op_and_reference(name, lists, kwargs, constraint, gen, *, steps=2):
    """`steps` calls of advx.ops.<name> on `lists` (in place) and of advx.reference.<name>
    on float32/float64 copies, fresh gradients each call; for half types the reference's
    params and states are rounded to the half type after every call, as advx stores them.
    Returns the reference's lists."""
    dtype = lists[0][0].dtype
    ref = reference_lists(name, lists)
    ref_constraint = constraint.for_reference() if isinstance(constraint, PerParamBall) else constraint
    for k in range(steps):
        if k:
            for i, g in enumerate(lists[1]):
                g.copy_(rand_like_shape(g.shape, gen, dtype, g.device))
                ref[1][i] = ref_copy(g)
        getattr(ops, name)(*lists, constraint=constraint, **kwargs)
        getattr(reference, name)(*ref, constraint=ref_constraint, **kwargs)
        if dtype in HALF:
            for j in (0,) + STATE_LISTS[name]:
                for t in ref[j]:
                    if t is not None:
                        t.copy_(t.to(dtype))
    return ref


def assert_lists_close(name, lists, ref):
    dtype = lists[0][0].dtype
    for j in (0,) + STATE_LISTS[name]:
        for i, (a, b) in enumerate(zip(lists[j], ref[j])):
            assert_close(a.to(b.dtype), b, **tol(dtype), msg=lambda m: f"list {j}, tensor {i} {tuple(a.shape)}: {m}")
    if STEPS_LIST[name] is not None:
        for a, b in zip(lists[STEPS_LIST[name]], ref[STEPS_LIST[name]]):
            assert torch.equal(a, b)


# ------------------------------------------------------------------ chunk-table rollover

SMALL_SHAPES = [(1,), (3, 5), (), (0, 4), (65536,), (2, 65537), (5, 7, 11), (4, 1000), (17,), (2, 3, 4, 5)]


def rollover_shapes(layout):
    """mid-tensor: 20 small tensors, then one of 21,000,003 elements whose chunks overflow
    the 320-block table in the middle (the rest continues in slot 0 of the next table),
    then 29 more, so the next table also hits the 24-tensor limit.
    at-boundary: five tensors of exactly 64 chunks fill 320 blocks at the last chunk of
    the fifth, then 30 small ones (24-tensor limit, then a last partial table)."""
    small = [SMALL_SHAPES[i % len(SMALL_SHAPES)] for i in range(30)]
    if layout == "mid-tensor":
        return small[:20] + [(3, 7_000_001)] + small[:29]
    return [(4, 16 * 65536)] * 5 + small


@cuda_only
@pytest.mark.parametrize("constraint", ["none", "linf"])
@pytest.mark.parametrize("layout", ["mid-tensor", "at-boundary"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", RULES)
def test_chunk_table_rollover_matches_reference(name, dtype, layout, constraint):
    gen = generator("cuda", 1)
    lists, kwargs = rule_inputs(name, rollover_shapes(layout), dtype, "cuda", gen)
    ball = make_ball(lists[0], "linf", gen) if constraint == "linf" else None
    ref = run_op_and_reference(name, lists, kwargs, ball, gen)
    assert_lists_close(name, lists, ref)


# ------------------------------------------------------------------ misaligned views

MISALIGNED_SHAPES = [(3, 70001), (4, 64), (1,), (2, 65536), ()]


@cuda_only
@pytest.mark.parametrize("which", ["all", "grads-only"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", RULES)
def test_optimizer_misaligned_views_match_reference(name, dtype, which):
    """Views that start one element into a buffer: the kernel's scalar path, for every
    tensor of the call or only for the gradients (the rest stays 16-byte aligned)."""
    gen = generator("cuda", 2)
    lists, kwargs = rule_inputs(name, MISALIGNED_SHAPES, dtype, "cuda", gen)
    steps_at = STEPS_LIST[name]
    for j, lst in enumerate(lists):
        if j != steps_at and (which == "all" or j == 1):
            lists[j] = [None if t is None else misaligned(t) for t in lst]
    assert lists[1][0].data_ptr() % 16 != 0
    ball = make_ball(lists[0], "linf", gen)
    if which == "all":
        ball.centers = [misaligned(c) for c in ball.centers]
    ref = run_op_and_reference(name, lists, kwargs, ball, gen)
    assert_lists_close(name, lists, ref)


@cuda_only
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_project_ops_misaligned_views_match_reference(norm, dtype):
    gen = generator("cuda", 3)
    shape = (4, 64)  # an even row: the vector path, were the pointers aligned
    x = misaligned(torch.rand(shape, generator=gen, device="cuda").to(dtype))
    g = misaligned(rand_like_shape(shape, gen, dtype, "cuda"))
    xo = misaligned(torch.rand(shape, generator=gen, device="cuda").to(dtype))
    eps = torch.tensor([0.05, 0.1, 0.2, 0.4], device="cuda") * (1 if norm == "linf" else 8)
    want = reference.pgd_step_(ref_copy(x), ref_copy(g), ref_copy(xo), eps, 0.05, norm).to(dtype)
    assert_close(ops.pgd_step_(x, g, xo, eps, 0.05, norm), want, **tol(dtype))
    d = misaligned(0.5 * rand_like_shape(shape, gen, dtype, "cuda"))
    want = reference.project_(ref_copy(d), eps, norm).to(dtype)
    assert_close(ops.project_(d, eps, norm), want, **tol(dtype))


# ------------------------------------------------------------------ half types x constraints (advx.optim)

OPTIMIZERS = {
    # advx.optim class kwargs, and the reference op with the same rule
    "SGD": (dict(lr=0.05, momentum=0.9), "sgd_step_", dict(lr=0.05, momentum=0.9)),
    "Adagrad": (dict(lr=0.1), "adagrad_step_", dict(lr=0.1)),
    "RMSprop": (dict(lr=0.01), "rmsprop_step_", dict(lr=0.01)),
    "Adam": (dict(lr=0.01), "adam_step_", dict(lr=0.01)),
    "AdamW": (dict(lr=0.01, weight_decay=0.1), "adam_step_", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
}
# advx.optim state key of each reference list (after params and grads)
STATE_KEYS = {"sgd_step_": ["momentum_buffer"], "adagrad_step_": ["sum", "step"],
              "rmsprop_step_": ["square_avg", None, None, "step"],
              "adam_step_": ["exp_avg", "exp_avg_sq", None, "step"]}


def _reference_state(op, params):
    zeros = [torch.zeros_like(p) for p in params]
    steps = [torch.tensor(0.0, device=params[0].device) for _ in params]
    if op == "sgd_step_":
        return [[None] * len(params)]
    if op == "adagrad_step_":
        return [zeros, steps]
    if op == "rmsprop_step_":
        return [zeros, [], [], steps]
    return [zeros, [torch.zeros_like(p) for p in params], [], steps]


@cuda_only
@pytest.mark.parametrize("constraint", ["box", "linf", "l2"])
@pytest.mark.parametrize("dtype", HALF, ids=["f16", "bf16"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_half_types_with_each_constraint_match_reference(name, dtype, constraint):
    kwargs, op, ref_kwargs = OPTIMIZERS[name]
    gen = generator("cuda", 4)
    shapes = [(4, 3, 17, 19), (4, 1000)]
    centers = [torch.rand(s, generator=gen, device="cuda").to(dtype) for s in shapes]
    start = [(c.float() + 0.05 * torch.randn(c.shape, generator=gen, device="cuda")).clamp(0, 1).to(dtype)
             for c in centers]
    eps = torch.tensor([0.02, 0.05, 0.1, 0.3], device="cuda") * (1 if constraint == "linf" else 10)
    if constraint == "box":
        ours_c, ref_c = advx.Box(0.25, 0.75), advx.Box(0.25, 0.75)
    else:
        ours_c = advx.LpBall(centers, eps=eps, norm=constraint, bounds=(0, 1))
        ref_c = advx.LpBall([c.float() for c in centers], eps=eps, norm=constraint, bounds=(0, 1))
    params = [torch.nn.Parameter(s.clone()) for s in start]
    opt = getattr(advx.optim, name)(params, constraint=ours_c, **kwargs)
    ref_params = [s.float() for s in start]
    state = _reference_state(op, ref_params)
    for _ in range(5):
        grads = [torch.randn(s, generator=gen, device="cuda").to(dtype) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        getattr(reference, op)(ref_params, [g.float() for g in grads], *state, constraint=ref_c, **ref_kwargs)
        for t in ref_params + [t for lst, key in zip(state, STATE_KEYS[op]) if key not in (None, "step")
                               for t in lst if t is not None]:
            t.copy_(t.to(dtype))
    for i, (p, q) in enumerate(zip(params, ref_params)):
        assert p.dtype == dtype
        assert_close(p.detach().float(), q, **tol(dtype), msg=lambda m: f"param {i}: {m}")
        for lst, key in zip(state, STATE_KEYS[op]):
            if key is not None:
                assert_close(opt.state[p][key].float(), lst[i].float(), **tol(dtype),
                             msg=lambda m: f"param {i} state {key}: {m}")


# ------------------------------------------------------------------ L2 over many reduction blocks

L2_SHAPES = [(3, 50000), (2, 3, 100, 101)]  # 50,000 and 30,300 elements per sample (> 8192)


@cuda_only
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", L2_SHAPES, ids=str)
def test_l2_project_ops_over_many_blocks_match_reference(shape, dtype):
    gen = generator("cuda", 5)
    batch = shape[0]
    x = torch.rand(shape, generator=gen, device="cuda").to(dtype)
    g = rand_like_shape(shape, gen, dtype, "cuda")
    xo = torch.rand(shape, generator=gen, device="cuda").to(dtype)
    # ||x - xo|| is ~90 per sample: radii that bind and one that does not
    eps = torch.tensor([10.0, 500.0, 40.0][:batch], device="cuda", dtype=math_dtype(dtype))
    want = reference.pgd_step_(ref_copy(x), ref_copy(g), ref_copy(xo), eps, 5.0, "l2").to(dtype)
    assert_close(ops.pgd_step_(x, g, xo, eps, 5.0, "l2"), want, **tol(dtype))
    d = rand_like_shape(shape, gen, dtype, "cuda", scale=0.01)  # norm ~2.2 per sample
    eps = torch.tensor([1.0, 5.0, 0.5][:batch], device="cuda", dtype=math_dtype(dtype))
    want = reference.project_(ref_copy(d), eps, "l2").to(dtype)
    assert_close(ops.project_(d, eps, "l2"), want, **tol(dtype))


@cuda_only
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", RULES)
def test_l2_constraint_over_many_blocks_matches_reference(name, dtype):
    gen = generator("cuda", 6)
    lists, kwargs = rule_inputs(name, [(3, 50000), (2, 70001), (4, 8192)], dtype, "cuda", gen)
    # ||p - center|| is ~300 per sample: radii between 20 and 400 bind for most samples
    ball = make_ball(lists[0], "l2", gen, lo=-3.0, hi=3.0, radius=(20.0, 400.0))
    ref = run_op_and_reference(name, lists, kwargs, ball, gen)
    assert_lists_close(name, lists, ref)


# ------------------------------------------------------------------ CUDA graphs

def _assert_same_optimizer_state(a, b, pa, pb, **tol_):
    for i, (p, q) in enumerate(zip(pa, pb)):
        assert_close(p.detach(), q.detach(), **tol_, msg=lambda m: f"param {i}: {m}")
        sa, sb = a.state[p], b.state[q]
        assert set(sa) == set(sb)
        for key in sa:
            assert_close(sa[key], sb[key], **tol_, msg=lambda m: f"param {i} state {key}: {m}")


@cuda_only
@pytest.mark.parametrize("scaler", [False, True], ids=["plain", "grad_scale-found_inf"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_optimizer_graph_capture_replays_like_eager(name, norm, scaler):
    """One captured step replayed with new gradients (and new GradScaler scale/found_inf
    values, one replay skipped, and a radius changed in place) equals eager steps."""
    shapes = [(4, 300), (4, 3, 5, 7)]
    gen = generator("cuda", 7)
    x0 = [torch.rand(s, generator=gen, device="cuda") for s in shapes]
    if name == "Adam":
        kwargs = dict(lr=torch.tensor(0.02, device="cuda"), amsgrad=True, capturable=True)
    else:
        kwargs = dict(lr=0.05, momentum=0.9)
    scale = 4.0 if norm == "linf" else 40.0
    eps = {k: torch.tensor([0.01, 0.02, 0.05, 0.1], device="cuda") * scale for k in ("static", "eager")}
    params = {k: [torch.nn.Parameter(x.clone()) for x in x0] for k in ("static", "eager")}
    opts = {k: getattr(advx.optim, name)(params[k], constraint=advx.LpBall(x0, eps=eps[k], norm=norm, bounds=(0, 1)),
                                         **kwargs) for k in ("static", "eager")}
    amp = {k: (torch.tensor(1.0, device="cuda"), torch.tensor(0.0, device="cuda")) for k in ("static", "eager")}
    if scaler:
        for k in opts:
            opts[k].grad_scale, opts[k].found_inf = amp[k]

    def set_grads(step):
        s = 2.0 ** (step % 3) if scaler else 1.0
        for k in opts:
            amp[k][0].fill_(s)
            amp[k][1].fill_(1.0 if scaler and step == 3 else 0.0)
        for p, q in zip(params["static"], params["eager"]):
            g = torch.randn(p.shape, generator=gen, device="cuda") * s
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)  # the graph reads the static .grad tensors
            q.grad = g.clone()

    set_grads(0)
    for k in opts:  # state is created eagerly, then one step is captured
        opts[k].step()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side), torch.cuda.graph(graph):
        opts["static"].step()
    torch.cuda.current_stream().wait_stream(side)
    for step in range(1, 7):
        set_grads(step)
        if step == 4:
            for k in eps:
                eps[k].mul_(0.5)  # read at every step, also by the graph
        graph.replay()
        opts["eager"].step()
    torch.cuda.synchronize()
    _assert_same_optimizer_state(opts["static"], opts["eager"], params["static"], params["eager"])
    if scaler:
        steps = opts["eager"].state[params["eager"][0]].get("step")
        if steps is not None:
            assert float(steps) == 6.0  # seven steps, one skipped by found_inf


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_edge_energy_graph_capture_replays_like_eager(dtype):
    shape = (4, 3, 64, 65)
    gen = generator("cuda", 8)
    x = torch.randn(shape, generator=gen, device="cuda").to(dtype).requires_grad_(True)
    grad_energy = torch.randn(shape[0], generator=gen, device="cuda").to(dtype)

    def forward_backward():
        energy = ops.edge_energy(x)
        (grad,) = torch.autograd.grad(energy, x, grad_energy)
        return energy.detach(), grad

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph
        for _ in range(2):
            forward_backward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_energy, static_grad = forward_backward()
    for _ in range(3):
        with torch.no_grad():
            x.copy_(torch.randn(shape, generator=gen, device="cuda").to(dtype))
            grad_energy.copy_(torch.randn(shape[0], generator=gen, device="cuda").to(dtype))
        graph.replay()
        energy, grad = forward_backward()
        torch.cuda.synchronize()
        assert torch.equal(static_energy, energy)
        assert torch.equal(static_grad, grad)
        assert_close(energy.double(), reference.edge_energy(x.detach().double()).to(dtype).double(),
                     **(tol(dtype) or dict(rtol=1e-4, atol=1e-4)))


# ------------------------------------------------------------------ determinism

@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", RULES)
def test_optimizer_l2_path_is_deterministic(name, dtype):
    shapes = [(8, 3, 64, 64), (3, 50000), (5, 7)]
    runs = []
    for _ in range(3):
        gen = generator("cuda", 9)
        lists, kwargs = rule_inputs(name, shapes, dtype, "cuda", gen)
        ball = make_ball(lists[0], "l2", gen, lo=-3.0, hi=3.0, radius=(10.0, 100.0))
        for _ in range(2):
            getattr(ops, name)(*lists, constraint=ball, **kwargs)
        torch.cuda.synchronize()
        runs.append(lists)
    for other in runs[1:]:
        for j, (lst, lst0) in enumerate(zip(other, runs[0])):
            for i, (a, b) in enumerate(zip(lst, lst0)):
                assert torch.equal(a, b), f"list {j} tensor {i} differs between identical runs"


# ------------------------------------------------------------------ non-default stream

SLEEP_CYCLES = 50_000_000  # tens of milliseconds of GPU time on the side stream


def _default_vs_side_stream(inputs, run):
    """run(tensors) on copies of `inputs` on the default stream, and on a side stream that
    first sleeps and only then writes its copies: a kernel launched on any stream but the
    current one runs before its inputs exist. Returns both (tensors, output) pairs."""
    on_default = [t.clone() for t in inputs]
    out_default = run(on_default)
    side = torch.cuda.Stream()
    on_side = [torch.zeros_like(t) for t in inputs]
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        if hasattr(torch.cuda, "_sleep"):
            torch.cuda._sleep(SLEEP_CYCLES)
        for dst, src in zip(on_side, inputs):
            dst.copy_(src)
        out_side = run(on_side)
    torch.cuda.current_stream().wait_stream(side)
    for t in on_side:
        t.record_stream(side)
    torch.cuda.synchronize()
    return (on_default, out_default), (on_side, out_side)


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, (list, tuple)):
        for x, y in zip(a, b):
            _assert_same(x, y)


def _stream_cases():
    def pgd(norm):
        def run(t):
            ops.pgd_step_(t[0], t[1], t[2], 0.5, 0.1, norm)
        return [(8, 3, 32, 33), (8, 3, 32, 33), (8, 3, 32, 33)], run

    def project(norm):
        def run(t):
            ops.project_(t[0], 1.0, norm)
        return [(8, 3, 32, 32)], run

    def edge(t):
        x = t[0].requires_grad_(True)
        energy = ops.edge_energy(x)
        (grad,) = torch.autograd.grad(energy, x, torch.ones_like(energy))
        return energy.detach(), grad

    def adam(norm):
        def run(t):
            params, grads, m, v = [t[0], t[1]], [t[2], t[3]], [t[4], t[5]], [t[6], t[7]]
            steps = [t[8], t[9]]
            ball = PerParamBall([t[10], t[11]], [t[12], t[13]], norm, -2.0, 2.0)
            ops.adam_step_(params, grads, m, v, [], steps, lr=0.1, constraint=ball)
        shapes = [(4, 20000), (3, 5)] * 4 + [(), ()] + [(4, 20000), (3, 5)] + [(4,), (3,)]
        return shapes, run

    return {"pgd_step_-linf": pgd("linf"), "pgd_step_-l2": pgd("l2"), "project_-linf": project("linf"),
            "project_-l2": project("l2"), "edge_energy": ([(2, 3, 40, 41)], edge),
            "adam_step_-linf": adam("linf"), "adam_step_-l2": adam("l2")}


STREAM_CASES = list(_stream_cases())


@cuda_only
@pytest.mark.parametrize("case", STREAM_CASES)
def test_ops_on_a_side_stream_match_the_default_stream(case):
    shapes, run = _stream_cases()[case]
    gen = generator("cuda", 10)
    inputs = [torch.rand(s, generator=gen, device="cuda") + (0.1 if case.startswith("adam") else 0.0)
              for s in shapes]
    (a, out_a), (b, out_b) = _default_vs_side_stream(inputs, run)
    _assert_same(a, b)
    _assert_same(out_a, out_b)
    if out_a is None:  # an in-place op: it changed its first input
        assert not torch.equal(a[0], inputs[0])


# ------------------------------------------------------------------ expanded radii (CPU and CUDA)

def _raw_call(name, lists, kwargs, *, centers, radii, norm, lo, hi):
    """torch.ops.advx.<name> with the full schema (what advx.ops passes), in place."""
    kw = dict(kwargs)
    lr = kw.pop("lr")
    tensor_lr = isinstance(lr, torch.Tensor)
    kw.update(lr=0.0 if tensor_lr else float(lr), lr_tensor=lr if tensor_lr else None, centers=centers,
              radii=radii, constraint_norm=norm, lo=lo, hi=hi)
    args = list(lists)
    if name == "sgd_step_":
        init = [b is None for b in args[2]]
        args[2] = [torch.zeros_like(p) if b is None else b for p, b in zip(args[0], args[2])]
        args.append(init)
    getattr(torch.ops.advx, name).default(*args, **kw)
    return args


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", RULES)
def test_raw_optimizer_op_with_expanded_radius(name, norm, device):
    """radii[i] = torch.tensor([r]).expand(B): stride 0, not contiguous; every sample
    must read r (a kernel indexing radius[b] without the stride reads past the end)."""
    gen = generator(device, 11)
    shapes = [(4, 7), (4, 3, 5), (4, 20000)]
    lists, kwargs = rule_inputs(name, shapes, torch.float32, device, gen)
    centers = [rand_like_shape(s, gen, torch.float32, device) for s in shapes]
    r = 0.1 if norm == "linf" else 0.5
    radii = [torch.tensor([r], device=device).expand(s[0]) for s in shapes]
    assert radii[0].stride() == (0,)
    ref = reference_lists(name, lists)
    ours = _raw_call(name, lists, kwargs, centers=centers, radii=radii, norm=norm, lo=-1.5, hi=1.5)
    getattr(reference, name)(*ref, constraint=advx.LpBall(centers, eps=r, norm=norm, bounds=(-1.5, 1.5)), **kwargs)
    assert_lists_close(name, ours, ref)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_raw_project_ops_with_expanded_budgets(norm, device):
    gen = generator(device, 12)
    shape = (4, 3, 9, 9)
    x = torch.rand(shape, generator=gen, device=device)
    g = torch.randn(shape, generator=gen, device=device)
    xo = torch.rand(shape, generator=gen, device=device)
    r = 0.05 if norm == "linf" else 0.5
    eps, alpha = torch.tensor([r], device=device).expand(4), torch.tensor([0.02], device=device).expand(4)
    want = reference.pgd_step_(x.clone(), g, xo, r, 0.02, norm)
    got = x.clone()
    torch.ops.advx.pgd_step_.default(got, g, xo, eps, alpha, norm, 0.0, 1.0)
    assert_close(got, want)
    d = 0.2 * torch.randn(shape, generator=gen, device=device)
    want = reference.project_(d.clone(), r, norm)
    torch.ops.advx.project_.default(d, eps, norm)
    assert_close(d, want)
