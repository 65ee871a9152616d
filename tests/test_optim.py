"""advx.optim against torch.optim, the fused ops against advx.reference, and everything
around them: state_dict both ways, LR schedulers, tensor lr, GradScaler semantics,
opcheck, bad input, CUDA parity and graph capture."""
import copy
import itertools
import math

import pytest
import torch
from torch.testing import assert_close

import advx
from advx import reference

# ------------------------------------------------------------------ fixtures

# (37, 1031) spans two 32K-element chunks of the CPU kernel, so two threads share it
SHAPES = [(3, 5), (7,), (1,), (), (0,), (2, 3, 5, 7), (37, 1031)]
LATE = 1  # this param has no gradient for the first LATE_STEPS steps (skipped as in torch)
LATE_STEPS = 30


def make_params(dtype, device, seed=1):
    """Odd shapes (empty, one element, 0-dim, sizes not multiples of 8, > one chunk) plus
    a channels_last, a transposed (dense, not contiguous) and a strided (not dense) one."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)

    tensors = [rand(*s) for s in SHAPES]
    tensors.append(rand(2, 3, 4, 5).contiguous(memory_format=torch.channels_last))
    tensors.append(rand(5, 3).t())
    tensors.append(rand(4, 6)[:, ::2])
    return [torch.nn.Parameter(t) for t in tensors]


def set_grads(step, gen, *param_lists, scale=1.0, param_layout=False):
    """The same fresh random gradient on the k-th param of every list: contiguous, or
    with the strides of its param when `param_layout`."""
    for k, params in enumerate(zip(*param_lists)):
        if k == LATE and step < LATE_STEPS:
            for p in params:
                p.grad = None
            continue
        p0 = params[0]
        g = torch.randn(p0.shape, generator=gen, dtype=torch.float64).to(dtype=p0.dtype, device=p0.device)
        for p in params:
            p.grad = (torch.empty_like(p).copy_(g) if param_layout else g.clone()) * scale


def assert_same_state(ours, theirs, ours_params, their_params, **tol):
    for i, (a, b) in enumerate(zip(ours_params, their_params)):
        assert_close(a.detach(), b.detach(), msg=lambda m: f"param {i}: {m}", **tol)
        sa, sb = ours.state.get(a, {}), theirs.state.get(b, {})
        assert set(sa) == set(sb), f"param {i}: state keys {set(sa)} != {set(sb)}"
        for key in sa:
            va, vb = sa[key], sb[key]
            if isinstance(va, torch.Tensor):
                assert va.dtype == vb.dtype, f"param {i} state {key}: {va.dtype} != {vb.dtype}"
                assert_close(va.cpu(), vb.cpu(), msg=lambda m: f"param {i} state {key}: {m}", **tol)
            else:
                assert va == vb


def run_pair(name, kwargs, dtype, device, steps, their_kwargs=None):
    ours_params = make_params(dtype, device)
    their_params = make_params(dtype, device)
    ours = getattr(advx.optim, name)(ours_params, **kwargs)
    theirs = getattr(torch.optim, name)(their_params, **(kwargs if their_kwargs is None else their_kwargs))
    gen = torch.Generator().manual_seed(2)
    for t in range(steps):
        set_grads(t, gen, ours_params, their_params)
        ours.step()
        theirs.step()
    return ours, theirs, ours_params, their_params


# ------------------------------------------------------------------ 200 steps vs torch.optim

def _cases():
    cases = []
    for ams, maxi, wd in itertools.product((False, True), (False, True), (0.0, 0.1)):
        for name in ("Adam", "AdamW"):
            cases.append((name, dict(lr=1e-2, amsgrad=ams, maximize=maxi, weight_decay=wd)))
    for (mom, damp, nest), wd, maxi in itertools.product(
            [(0.0, 0.0, False), (0.9, 0.0, False), (0.9, 0.3, False), (0.9, 0.0, True)], (0.0, 0.1), (False, True)):
        cases.append(("SGD", dict(lr=1e-2, momentum=mom, dampening=damp, nesterov=nest, weight_decay=wd, maximize=maxi)))
    for decay, wd, init, maxi in itertools.product((0.0, 0.01), (0.0, 0.1), (0.0, 0.1), (False, True)):
        cases.append(("Adagrad", dict(lr=0.1, lr_decay=decay, weight_decay=wd, initial_accumulator_value=init, maximize=maxi)))
    for mom, centered, wd, maxi in itertools.product((0.0, 0.9), (False, True), (0.0, 0.1), (False, True)):
        cases.append(("RMSprop", dict(lr=1e-2, momentum=mom, centered=centered, weight_decay=wd, maximize=maxi)))
    return cases


CASES = _cases()


def _case_id(case):
    name, kwargs = case
    flags = "-".join(f"{k}={v}" for k, v in kwargs.items() if k != "lr")
    return f"{name}-{flags}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_200_steps_match_torch_optim(case, dtype, device):
    name, kwargs = case
    ours, theirs, op, tp = run_pair(name, kwargs, dtype, device, steps=200)
    assert_same_state(ours, theirs, op, tp)


@pytest.mark.parametrize("name,kwargs", [
    ("Adam", dict(lr=1e-2, weight_decay=0.1)),
    ("AdamW", dict(lr=1e-2, amsgrad=True)),
    ("SGD", dict(lr=1e-2, momentum=0.9, nesterov=True)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01)),
    ("RMSprop", dict(lr=1e-2, momentum=0.9, centered=True)),
])
def test_bfloat16_close_to_torch_optim(name, kwargs, device):
    # torch rounds to bfloat16 after every operation, advx once per update (float math):
    # they agree to bfloat16 resolution over a few steps
    ours, theirs, op, tp = run_pair(name, kwargs, torch.bfloat16, device, steps=10)
    for a, b in zip(op, tp):
        assert_close(a.detach().float(), b.detach().float(), rtol=5e-2, atol=5e-2)


def test_complex_params_match_torch(device):
    torch.manual_seed(3)
    a = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.complex64, device=device))
    b = torch.nn.Parameter(a.detach().clone())
    ours, theirs = advx.optim.Adam([a], lr=1e-2), torch.optim.Adam([b], lr=1e-2)
    for _ in range(20):
        g = torch.randn_like(a)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    assert_close(a.detach(), b.detach())


def test_one_fused_call_per_group(device, monkeypatch):
    calls = []
    op = torch.ops.advx.adam_step_.default

    class Counting:
        default = staticmethod(lambda *a, **k: (calls.append(len(a[0])), op(*a, **k)))

    params = make_params(torch.float32, device)
    opt = advx.optim.Adam([{"params": params[:4]}, {"params": params[4:], "lr": 1e-3}])
    set_grads(100, torch.Generator().manual_seed(0), params)
    monkeypatch.setattr(torch.ops.advx, "adam_step_", Counting)
    opt.step()
    assert calls == [4, len(params) - 4]


# ------------------------------------------------------------------ fused op vs reference

def _op_inputs(name, dtype, device, flags):
    """Fresh inputs for one op: (list args, keyword args) shared by advx.ops and advx.reference."""
    params = [p.detach() for p in make_params(dtype, device, seed=5)]
    gen = torch.Generator().manual_seed(6)

    def like(scale=1.0, positive=False):
        out = []
        for p in params:
            t = torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale
            out.append((t.abs() if positive else t).to(dtype=dtype, device=device))
        return out

    grads = like()
    steps = [torch.tensor(float(3 + i % 2), device=device) for i in range(len(params))]
    common = dict(maximize=flags, weight_decay=0.1 if flags else 0.0)
    if flags:
        common.update(grad_scale=torch.tensor(4.0, device=device), found_inf=torch.tensor(0.0, device=device))
    if name == "sgd_step_":
        bufs = like()
        bufs[0] = None  # a new buffer: starts as the gradient
        return [params, grads, bufs], dict(lr=0.05, momentum=0.9, dampening=0.1 if not flags else 0.0,
                                           nesterov=flags, **common)
    if name == "adagrad_step_":
        return [params, grads, like(positive=True), steps], dict(lr=0.1, lr_decay=0.01, eps=1e-10, **common)
    if name == "rmsprop_step_":
        sq = like(positive=True)
        ga = [0.1 * s for s in sq]
        return [params, grads, sq, ga if flags else [], like() if flags else [], steps], dict(
            lr=0.01, alpha=0.9, eps=1e-8, momentum=0.9 if flags else 0.0, centered=flags, **common)
    sq = like(positive=True)
    return [params, grads, like(0.1), sq, [s * 1.5 for s in sq] if flags else [], steps], dict(
        lr=0.01, beta1=0.9, beta2=0.99, eps=1e-8, amsgrad=flags, decoupled_weight_decay=flags, **common)


OP_NAMES = ["sgd_step_", "adagrad_step_", "rmsprop_step_", "adam_step_"]


def _clone_args(args):
    return [[None if t is None else t.clone() for t in lst] for lst in args]


@pytest.mark.parametrize("flags", [False, True], ids=["plain", "all-flags"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
@pytest.mark.parametrize("name", OP_NAMES)
def test_fused_op_matches_reference(name, dtype, flags, device):
    args, kwargs = _op_inputs(name, dtype, device, flags)
    ref_args = _clone_args(args)
    low = dtype == torch.bfloat16
    if low:
        # advx computes in float32 and rounds once per update: its oracle is the reference
        # in float32 with the results rounded to bfloat16 after every step
        ref_args = [[None if t is None else t.to(torch.float32, copy=True) for t in lst] for lst in args]
    grads_before = [g.clone() for g in args[1]]
    for _ in range(3):
        getattr(advx.ops, name)(*args, **kwargs)
        getattr(reference, name)(*ref_args, **kwargs)
        if low:
            steps_list = None if name == "sgd_step_" else len(args) - 1
            for j, lst in enumerate(ref_args):
                if j not in (1, steps_list):  # grads and step counters stay as they are
                    for t in lst:
                        if t is not None:
                            t.copy_(t.to(dtype))
    tol = dict(rtol=1.6e-2, atol=2e-2) if low else {}  # one bfloat16 ulp of a state, times lr
    for lst, ref_lst in zip(args, ref_args):
        for a, b in zip(lst, ref_lst):
            assert_close(a.to(b.dtype), b, **tol)
    for g, g0 in zip(args[1], grads_before):  # not handed over for update: untouched
        assert torch.equal(g, g0)


@pytest.mark.parametrize("name", OP_NAMES)
def test_found_inf_skips_everything(name, device):
    args, kwargs = _op_inputs(name, torch.float32, device, flags=True)
    kwargs["found_inf"] = torch.tensor(1.0, device=device)
    before = _clone_args(args)
    getattr(advx.ops, name)(*args, **kwargs)
    for lst, lst0 in zip(args[:1] + args[2:], before[:1] + before[2:]):
        for a, b in zip(lst, lst0):
            if b is not None:  # sgd's new buffer was created, never updated
                assert torch.equal(a, b)


# ------------------------------------------------------------------ state_dict both ways

OPT_KWARGS = {
    "Adam": dict(lr=1e-2, amsgrad=True, weight_decay=0.1),
    "AdamW": dict(lr=1e-2, weight_decay=0.1),
    "SGD": dict(lr=1e-2, momentum=0.9, dampening=0.1),
    "Adagrad": dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
    "RMSprop": dict(lr=1e-2, momentum=0.9, centered=True),
}


@pytest.mark.parametrize("direction", ["torch-to-advx", "advx-to-torch"])
@pytest.mark.parametrize("name", list(OPT_KWARGS))
def test_state_dict_round_trip_continues_identically(name, direction, device):
    kwargs = OPT_KWARGS[name]
    gen = torch.Generator().manual_seed(4)
    first_cls, second_cls = ((torch.optim, advx.optim) if direction == "torch-to-advx"
                             else (advx.optim, torch.optim))
    # one optimizer runs 40 steps; another saves after 20 and hands over to the other kind
    straight_params, saved_params = make_params(torch.float64, device), make_params(torch.float64, device)
    straight = getattr(torch.optim, name)(straight_params, **kwargs)
    first = getattr(first_cls, name)(saved_params, **kwargs)
    for t in range(20):
        set_grads(t, gen, straight_params, saved_params)
        straight.step()
        first.step()
    saved = copy.deepcopy(first.state_dict())
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in saved_params]
    second = getattr(second_cls, name)(resumed_params, **kwargs)
    second.load_state_dict(saved)
    assert second.state_dict()["param_groups"] == first.state_dict()["param_groups"]
    for t in range(20, 40):
        set_grads(t, gen, straight_params, resumed_params)
        straight.step()
        second.step()
    assert_same_state(second, straight, resumed_params, straight_params)


def test_state_dict_has_torch_keys_and_no_constraint(device):
    params = make_params(torch.float32, device)[:1]
    ours = advx.optim.Adam(params, constraint=advx.Box(-1, 1))
    theirs = torch.optim.Adam([torch.nn.Parameter(params[0].detach().clone())])
    set_grads(100, torch.Generator().manual_seed(0), params, theirs.param_groups[0]["params"])
    ours.step()
    theirs.step()
    a, b = ours.state_dict(), theirs.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    assert a["state"][0].keys() == b["state"][0].keys()
    ours.load_state_dict(b)
    assert isinstance(ours.param_groups[0]["constraint"], advx.Box)  # kept across loads


# ------------------------------------------------------------------ LR schedulers, tensor lr

SCHEDULERS = {
    "MultiStepLR": lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[5, 12], gamma=0.3),
    "CosineAnnealingLR": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20, eta_min=1e-4),
    "LinearLR-warmup": lambda opt: torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=8),
    "SequentialLR-warmup-cosine": lambda opt: torch.optim.lr_scheduler.SequentialLR(
        opt,
        [torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=5),
         torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=15)],
        milestones=[5]),
}


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("name", list(OPT_KWARGS))
def test_lr_schedulers_drive_advx_like_torch(name, scheduler, device):
    kwargs = OPT_KWARGS[name]
    op, tp = make_params(torch.float64, device), make_params(torch.float64, device)
    ours, theirs = getattr(advx.optim, name)(op, **kwargs), getattr(torch.optim, name)(tp, **kwargs)
    sched_ours, sched_theirs = SCHEDULERS[scheduler](ours), SCHEDULERS[scheduler](theirs)
    gen = torch.Generator().manual_seed(7)
    for t in range(25):
        set_grads(t, gen, op, tp)
        ours.step()
        theirs.step()
        sched_ours.step()
        sched_theirs.step()
        assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"]
    assert_same_state(ours, theirs, op, tp)


@pytest.mark.parametrize("name", list(OPT_KWARGS))
def test_tensor_lr_matches_float_lr(name, device):
    kwargs = dict(OPT_KWARGS[name])
    lr = kwargs.pop("lr")
    op, tp = make_params(torch.float64, device), make_params(torch.float64, device)
    ours = getattr(advx.optim, name)(op, lr=torch.tensor(lr, device=device), **kwargs)
    theirs = getattr(torch.optim, name)(tp, lr=lr, **kwargs)
    sched_ours = torch.optim.lr_scheduler.MultiStepLR(ours, milestones=[4], gamma=0.5)
    sched_theirs = torch.optim.lr_scheduler.MultiStepLR(theirs, milestones=[4], gamma=0.5)
    gen = torch.Generator().manual_seed(8)
    for t in range(10):
        set_grads(t, gen, op, tp)
        ours.step()
        theirs.step()
        sched_ours.step()
        sched_theirs.step()
    assert isinstance(ours.param_groups[0]["lr"], torch.Tensor)
    # the lr tensor is float32 (torch's choice for tensor lrs): float32-level agreement
    assert_same_state(ours, theirs, op, tp, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ GradScaler semantics

@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "Adagrad"])
def test_grad_scale_and_found_inf_match_torch_fused(name, device):
    kwargs = OPT_KWARGS[name]
    # torch's fused CPU kernels (2.13) misread non-dense params and gradients whose
    # strides differ from their param's: leave the former out, give grads param layouts
    op, tp = make_params(torch.float32, device)[:-1], make_params(torch.float32, device)[:-1]
    ours = getattr(advx.optim, name)(op, **kwargs)
    # torch 2.11's Adagrad has no fused CUDA kernel (fused=True raises there); its foreach
    # path takes no grad_scale/found_inf, so the reference unscales and skips by hand
    manual = name == "Adagrad" and device == "cuda"
    theirs = getattr(torch.optim, name)(tp, **(dict(foreach=True) if manual else dict(fused=True)), **kwargs)
    gen = torch.Generator().manual_seed(9)
    for t in range(20):
        scale = torch.tensor(2.0 ** (t % 5), device=device)
        set_grads(t, gen, op, tp, scale=float(scale), param_layout=True)
        found_inf = torch.tensor(1.0 if t % 7 == 3 else 0.0, device=device)
        ours.grad_scale, ours.found_inf = scale, found_inf
        ours.step()
        del ours.grad_scale, ours.found_inf
        if manual:
            if not found_inf.item():
                for p in tp:
                    if p.grad is not None:
                        p.grad.div_(scale)  # a power of two: exact, as the kernel's division
                theirs.step()
        else:
            theirs.grad_scale, theirs.found_inf = scale, found_inf
            theirs.step()
            del theirs.grad_scale, theirs.found_inf
    assert_same_state(ours, theirs, op, tp)


def test_rmsprop_grad_scale_is_manual_unscale(device):
    op, tp = make_params(torch.float32, device), make_params(torch.float32, device)
    ours = advx.optim.RMSprop(op, **OPT_KWARGS["RMSprop"])
    theirs = torch.optim.RMSprop(tp, **OPT_KWARGS["RMSprop"])
    gen = torch.Generator().manual_seed(10)
    for t in range(20):
        scale = 2.0 ** (t % 5)
        set_grads(t, gen, op, tp, scale=scale)
        skip = t % 7 == 3
        ours.grad_scale = torch.tensor(scale, device=device)
        ours.found_inf = torch.tensor(float(skip), device=device)
        ours.step()
        if not skip:
            for p in tp:
                if p.grad is not None:
                    p.grad.div_(scale)
            theirs.step()
    del ours.grad_scale, ours.found_inf
    assert_same_state(ours, theirs, op, tp)


def test_with_grad_scaler_like_torch_fused_adam():
    # GradScaler hands grad_scale/found_inf to optimizers with _step_supports_amp_scaling
    torch.manual_seed(11)
    models = [torch.nn.Linear(6, 3) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [advx.optim.Adam(models[0].parameters(), lr=1e-2),
            torch.optim.Adam(models[1].parameters(), lr=1e-2, fused=True)]
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=3) for _ in range(2)]
    for t in range(12):
        x = torch.randn(5, 6)
        if t == 4:
            x[0, 0] = float("inf")  # an overflowing step: skipped, scale backs off
        for model, opt, scaler in zip(models, opts, scalers):
            opt.zero_grad()
            scaler.scale(model(x).square().mean()).backward()
            scaler.step(opt)
            scaler.update()
    assert scalers[0].get_scale() == scalers[1].get_scale()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert_close(a, b)
    assert_same_state(opts[0], opts[1], list(models[0].parameters()), list(models[1].parameters()))


# ------------------------------------------------------------------ opcheck

def _raw_op_args(name, device, constrained):
    args, kwargs = _op_inputs(name, torch.float32, device, flags=True)
    params = args[0]
    lr = kwargs.pop("lr")
    kwargs.update(lr=lr, lr_tensor=None, centers=[], radii=[], constraint_norm="none",
                  lo=-math.inf, hi=math.inf)
    if constrained:
        kwargs.update(centers=[p.clone() for p in params],
                      radii=[torch.full((p.shape[0] if p.dim() else 1,), 0.5, device=device) for p in params],
                      constraint_norm=constrained, lo=-2.0, hi=2.0, lr_tensor=torch.tensor(lr, device=device))
    if name == "sgd_step_":
        args[2][0] = torch.zeros_like(params[0])
        args.append([i == 0 for i in range(len(params))])
    for key in ("maximize", "weight_decay"):
        kwargs.setdefault(key, 0.0 if key == "weight_decay" else False)
    defaults = {"sgd_step_": dict(momentum=0.0, dampening=0.0, nesterov=False),
                "adagrad_step_": dict(lr_decay=0.0, eps=1e-10),
                "rmsprop_step_": dict(alpha=0.99, eps=1e-8, momentum=0.0, centered=False),
                "adam_step_": dict(beta1=0.9, beta2=0.999, eps=1e-8, amsgrad=False, decoupled_weight_decay=False)}
    for key, value in defaults[name].items():
        kwargs.setdefault(key, value)
    return args, kwargs


@pytest.mark.parametrize("constrained", [None, "linf", "onto_l2", "onto_l1"], ids=str)
@pytest.mark.parametrize("name", OP_NAMES)
def test_opcheck(name, constrained, device):
    args, kwargs = _raw_op_args(name, device, constrained)
    torch.library.opcheck(getattr(torch.ops.advx, name).default, tuple(args), kwargs)


# ------------------------------------------------------------------ bad input

def _adam_lists(n=2, dtype=torch.float32):
    params = [torch.randn(3, 2, dtype=dtype) for _ in range(n)]
    return (params, [torch.randn_like(p) for p in params], [torch.zeros_like(p) for p in params],
            [torch.zeros_like(p) for p in params], [], [torch.tensor(0.0) for _ in params])


@pytest.mark.parametrize("mutate,error,match", [
    (lambda a: a.__setitem__(0, a[0][0]), TypeError, "params must be a list"),
    (lambda a: a[1].pop(), ValueError, "grads has 1 tensors but params has 2"),
    (lambda a: a[1].__setitem__(1, a[1][1].double()), TypeError, r"grads\[1\] has dtype"),
    (lambda a: a[2].__setitem__(0, torch.zeros(2, 3)), ValueError, r"exp_avgs\[0\] has shape"),
    (lambda a: a[1].__setitem__(0, a[1][0].to_sparse()), TypeError, "sparse"),
    (lambda a: a[5].__setitem__(1, torch.tensor(0)), TypeError, r"steps\[1\]"),
    (lambda a: a[0].__setitem__(1, a[0][1].double()), TypeError, r"params\[1\] has dtype"),
    (lambda a: a[0].__setitem__(1, a[0][1].int()), TypeError, r"params\[1\] must be a floating"),
])
def test_bad_lists_raise_named_errors(mutate, error, match):
    args = list(_adam_lists())
    mutate(args)
    with pytest.raises(error, match=match):
        advx.ops.adam_step_(*args)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(lr=-1.0), ValueError, "lr must be"),
    (dict(lr=torch.tensor([1.0, 2.0])), TypeError, "lr must be"),
    (dict(grad_scale=2.0), TypeError, "grad_scale"),
    (dict(found_inf=torch.tensor([0, 0])), TypeError, "found_inf"),
    (dict(constraint="linf"), TypeError, "constraint must be"),
    (dict(constraint=advx.LpBall(torch.zeros(4, 2), eps=0.1)), ValueError, "center"),
])
def test_bad_scalars_raise_named_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        advx.ops.adam_step_(*_adam_lists(), **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(constraint_norm="l3"), "constraint_norm must be"),
    (dict(lo=1.0, hi=0.0), "lo <= hi"),
    (dict(constraint_norm="linf", radii=[torch.ones(2), torch.ones(3)]), r"radii\[0\] must have shape \[3\]"),
    (dict(constraint_norm="linf", radii=[torch.ones(3, dtype=torch.float64)] * 2), r"radii\[0\] must have dtype"),
    (dict(radii=[torch.ones(3)] * 2), "must be empty when constraint_norm is 'none'"),
    (dict(amsgrad=True), "max_exp_avg_sqs has 0 tensors"),
    (dict(lr_tensor=torch.ones(2)), "lr_tensor must be a tensor with one element"),
])
def test_raw_op_checks_name_the_argument(kwargs, match):
    params, grads, m, v, vmax, steps = _adam_lists()
    full = dict(lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False,
                decoupled_weight_decay=False, lr_tensor=None, grad_scale=None, found_inf=None, centers=[],
                radii=[], constraint_norm="none", lo=-math.inf, hi=math.inf)
    full.update(kwargs)
    before = [p.clone() for p in params]
    with pytest.raises(RuntimeError, match=match):
        torch.ops.advx.adam_step_.default(params, grads, m, v, vmax, steps, **full)
    assert all(torch.equal(a, b) for a, b in zip(params, before))
    assert all(float(s) == 0.0 for s in steps)


def test_raw_op_rejects_step_dtype():
    params, grads, m, v, vmax, steps = _adam_lists()
    steps[0] = torch.tensor(0, dtype=torch.int64)
    with pytest.raises(RuntimeError, match=r"steps\[0\] must have dtype"):
        torch.ops.advx.adagrad_step_.default(
            params, grads, m, steps, lr=0.1, lr_decay=0.0, weight_decay=0.0, eps=1e-10, maximize=False,
            lr_tensor=None, grad_scale=None, found_inf=None, centers=[], radii=[], constraint_norm="none",
            lo=-math.inf, hi=math.inf)


@pytest.mark.parametrize("name", list(OPT_KWARGS))
def test_optimizer_rejects_sparse_grads(name):
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = getattr(advx.optim, name)([p], **OPT_KWARGS[name])
    p.grad = torch.randn(4, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_optimizer_rejects_bad_constraint():
    p = torch.nn.Parameter(torch.randn(4, 3))
    with pytest.raises(TypeError, match="constraint must be"):
        advx.optim.SGD([p], lr=0.1, constraint=(0, 1))
    with pytest.raises(ValueError, match="center has shape"):
        advx.optim.SGD([p], lr=0.1, constraint=advx.LpBall(torch.zeros(4, 2), eps=0.1))
    opt = advx.optim.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="eps has shape"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(5))],
                             "constraint": advx.LpBall(eps=torch.ones(4))})


def test_differentiable_runs_torch_step():
    # differentiable=True optimizes non-leaf tensors through autograd: torch's own step
    w = torch.randn(3, requires_grad=True)
    p, q = w * 1.0, w * 1.0
    p.retain_grad()
    q.retain_grad()
    ours = advx.optim.SGD([p], lr=0.1, momentum=0.9, differentiable=True)
    theirs = torch.optim.SGD([q], lr=0.1, momentum=0.9, differentiable=True)
    for _ in range(3):
        g = torch.randn(3)
        p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    assert_close(p.detach(), q.detach())
    assert p.grad_fn is not None  # the update is part of the graph
    with pytest.raises(RuntimeError, match="differentiable"):
        advx.optim.SGD([p], lr=0.1, differentiable=True, constraint=advx.Box(0, 1)).step()


# ------------------------------------------------------------------ CUDA

def test_cuda_matches_cpu(device):
    if device != "cuda":
        pytest.skip("compares the CUDA kernels with the CPU kernels")
    for name, kwargs in OPT_KWARGS.items():
        cuda_params, cpu_params = make_params(torch.float32, "cuda"), make_params(torch.float32, "cpu")
        a, b = getattr(advx.optim, name)(cuda_params, **kwargs), getattr(advx.optim, name)(cpu_params, **kwargs)
        gen = torch.Generator().manual_seed(12)
        for t in range(50):
            set_grads(t, gen, cpu_params)
            for p, q in zip(cuda_params, cpu_params):
                p.grad = None if q.grad is None else q.grad.cuda()
            a.step()
            b.step()
        assert_same_state(a, b, cuda_params, cpu_params, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_cuda_half_types_close_to_float32(dtype, device):
    if device != "cuda":
        pytest.skip("half types are a CUDA feature")
    low = make_params(dtype, device)
    high = [torch.nn.Parameter(p.detach().float()) for p in low]
    a, b = advx.optim.Adam(low, lr=1e-2), advx.optim.Adam(high, lr=1e-2)
    gen = torch.Generator().manual_seed(13)
    for t in range(5):
        set_grads(t, gen, high)
        for p, q in zip(low, high):
            p.grad = None if q.grad is None else q.grad.to(dtype)
        a.step()
        b.step()
    for p, q in zip(low, high):
        assert_close(p.detach().float(), q.detach(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("name", list(OPT_KWARGS))
def test_cuda_graph_capture_replays_like_eager(name, device):
    if device != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    kwargs = dict(OPT_KWARGS[name], lr=torch.tensor(OPT_KWARGS[name]["lr"], device="cuda"))
    shapes = [(300, 257), (7,), (2, 3, 5)]
    static = [torch.nn.Parameter(torch.randn(s, device="cuda")) for s in shapes]
    eager = [torch.nn.Parameter(p.detach().clone()) for p in static]
    opt_static = getattr(advx.optim, name)(static, constraint=advx.Box(-3, 3), **kwargs)
    opt_eager = getattr(advx.optim, name)(eager, constraint=advx.Box(-3, 3), **kwargs)
    gen = torch.Generator().manual_seed(14)
    grads = [torch.randn(s, generator=gen).cuda() for s in shapes]
    for p, q, g in zip(static, eager, grads):
        p.grad, q.grad = g.clone(), g.clone()
    opt_static.step()  # state is created eagerly, then the step is captured
    opt_eager.step()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side), torch.cuda.graph(graph):
        opt_static.step()
    torch.cuda.current_stream().wait_stream(side)
    for _ in range(5):
        new = [torch.randn(s, generator=gen).cuda() for s in shapes]
        for p, q, g in zip(static, eager, new):
            p.grad.copy_(g)
            q.grad = g.clone()
        graph.replay()
        opt_eager.step()
    torch.cuda.synchronize()
    assert_same_state(opt_static, opt_eager, static, eager)


def test_adagrad_accepts_fused_on_every_device(device):
    # torch 2.11's own Adagrad refuses fused=True on CUDA; advx's step is fused everywhere.
    p = torch.randn(5, 7, device=device)
    a, b = p.clone().requires_grad_(), p.clone().requires_grad_()
    fused = advx.optim.Adagrad([a], lr=0.1, fused=True)
    reference = torch.optim.Adagrad([b], lr=0.1, foreach=False)
    for _ in range(5):
        g = torch.randn_like(p)
        a.grad, b.grad = g.clone(), g.clone()
        fused.step()
        reference.step()
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW"])
def test_step_without_gradients_does_nothing(name):
    # torch.optim skips parameters without .grad: a fresh optimizer, zero_grad(set_to_none)
    # or a frozen group must not raise and must not move anything.
    frozen, live = torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))
    kwargs = {"momentum": 0.9} if name in ("SGD", "RMSprop") else {}
    opt = getattr(advx.optim, name)([{"params": [frozen]}, {"params": [live]}], lr=0.1, **kwargs)
    before = frozen.detach().clone(), live.detach().clone()
    opt.step()
    opt.zero_grad(set_to_none=True)
    opt.step()
    live.grad = torch.randn_like(live)
    opt.step()
    assert torch.equal(frozen, before[0])
    assert not torch.equal(live, before[1])


@pytest.mark.parametrize("op", ["sgd_step_", "adagrad_step_", "rmsprop_step_", "adam_step_"])
def test_functional_steps_on_empty_lists_do_nothing(op):
    n_lists = {"sgd_step_": 3, "adagrad_step_": 4, "rmsprop_step_": 6, "adam_step_": 6}[op]
    getattr(advx.ops, op)(*([] for _ in range(n_lists)), momentum=0.9) if op == "sgd_step_" \
        else getattr(advx.ops, op)(*([] for _ in range(n_lists)))
