"""The budget promise, as a property: for random shapes, dtypes, norms, budgets and
bounds, the result of every attack and of pgd_step_ / project_ lies, in its own dtype
and compared in float64 with no tolerance, inside the eps ball and inside the bounds."""
import math

import pytest
import torch

import advx
from advx import ops

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float64]
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


def inside(value: float, dtype: torch.dtype, up: bool) -> float:
    """The nearest value of dtype on the inside of a bound (up: at or above it)."""
    r = torch.tensor(value, dtype=torch.float64).to(dtype)
    if (r.double() < value) if up else (r.double() > value):
        r = torch.nextafter(r, torch.tensor(math.inf if up else -math.inf, dtype=dtype))
    return float(r)


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from(DTYPES))
    batch = draw(st.integers(1, 5))
    sample = tuple(draw(st.lists(st.integers(1, 7), min_size=1, max_size=3)))
    norm = draw(st.sampled_from(["linf", "l2"]))
    eps = draw(st.floats(1e-3, 2.0) if norm == "l2" else st.floats(1e-3, 0.5))
    lo = draw(st.floats(-1.0, 0.4))
    hi = draw(st.floats(0.6, 2.0))
    seed = draw(st.integers(0, 2 ** 16))
    return dtype, (batch, *sample), norm, eps, (lo, hi), seed


def images_in(shape, bounds, dtype, gen):
    lo, hi = bounds
    x = (lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)).to(dtype)
    return x.clamp(inside(lo, dtype, True), inside(hi, dtype, False))


def assert_inside(adv, x, eps, norm, bounds):
    assert adv.dtype == x.dtype
    d = (adv.double() - x.double()).reshape(x.shape[0], -1)
    size = {"linf": lambda: d.abs().amax(dim=1), "l1": lambda: d.abs().sum(dim=1),
            "l2": lambda: torch.linalg.vector_norm(d, dim=1)}[norm]()
    if eps is not None:
        assert bool((size <= eps).all()), f"{norm} sizes {size.tolist()} exceed eps {eps}"
    if bounds is not None:
        lo, hi = bounds
        assert float(adv.double().min()) >= lo and float(adv.double().max()) <= hi


@SETTINGS
@given(cases())
def test_pgd_step_and_project_stay_inside(case):
    dtype, shape, norm, eps, bounds, seed = case
    gen = torch.Generator().manual_seed(seed)
    x = images_in(shape, bounds, dtype, gen)
    adv = x.clone()
    for _ in range(3):
        grad = torch.randn(shape, generator=gen).to(dtype)
        ops.pgd_step_(adv, grad, x, eps, eps * 0.7, norm, bounds)
        assert_inside(adv, x, eps, norm, bounds)
    delta = (torch.randn(shape, generator=gen) * eps).to(dtype)
    ops.project_(delta, eps, norm)
    assert_inside(delta, torch.zeros_like(delta), eps, norm, None)
    far = (torch.randn(shape, generator=gen) * 2).to(dtype)
    ops.project_onto_(far, x, eps, norm, bounds)
    assert_inside(far, x, eps, norm, bounds)
    l1 = (torch.randn(shape, generator=gen) * 2).to(dtype)
    ops.project_onto_(l1, x, eps, "l1", bounds)
    assert float((l1.double() - x.double()).reshape(shape[0], -1).abs().sum(1).max()) <= eps


class Linear(torch.nn.Module):
    def __init__(self, features, dtype, seed):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(4, features, generator=gen).to(dtype))

    def forward(self, x):
        return x.flatten(1) @ self.weight.t()


ATTACKS = [
    ("pgd-sign", lambda m, eps, norm, b: advx.attacks.PGD(m, eps, steps=3, norm=norm, bounds=b, seed=0)),
    ("pgd-adam", lambda m, eps, norm, b: advx.attacks.PGD(m, eps, steps=3, norm=norm, bounds=b, optimizer="adam",
                                                          seed=0)),
    ("pgd-momentum", lambda m, eps, norm, b: advx.attacks.PGD(m, eps, steps=3, norm=norm, bounds=b,
                                                              optimizer="momentum", seed=0)),
    ("fgsm", lambda m, eps, norm, b: advx.attacks.FGSM(m, eps, bounds=b)),
    ("pgd-l1", lambda m, eps, norm, b: advx.attacks.PGD(m, eps, steps=3, norm="l1", bounds=b, seed=0,
                                                        l1_sparsity=0.3)),
    ("apgd", lambda m, eps, norm, b: advx.attacks.APGD(m, eps, norm, steps=4, bounds=b, seed=0)),
    ("square", lambda m, eps, norm, b: advx.attacks.Square(m, eps, norm, queries=20, seed=0, bounds=b)),
    ("apgd-t", lambda m, eps, norm, b: advx.attacks.APGDT(m, eps, norm, steps=3, n_targets=2, bounds=b, seed=0)),
]


@pytest.mark.parametrize("name,make", ATTACKS, ids=[a[0] for a in ATTACKS])
@SETTINGS
@given(case=cases())
def test_attacks_stay_inside(name, make, case):
    dtype, shape, norm, eps, bounds, seed = case
    if name == "fgsm":
        norm = "linf"
    if name == "pgd-l1":
        norm = "l1"
    if name == "square":
        shape = (shape[0], 1, 3, shape[-1])  # [B, C, H, W]
    gen = torch.Generator().manual_seed(seed)
    x = images_in(shape, bounds, dtype, gen)
    model = Linear(x[0].numel(), dtype, seed)
    labels = torch.randint(0, 4, (shape[0],), generator=gen)
    eps_arg = eps if seed % 2 else torch.full((shape[0],), eps, dtype=torch.float64)
    res = make(model, eps_arg, norm, bounds).run(x, labels)
    assert_inside(res.adv, x, eps, norm, bounds)


@SETTINGS
@given(case=cases())
def test_box_attacks_stay_in_bounds(case):
    dtype, shape, _, _, bounds, seed = case
    gen = torch.Generator().manual_seed(seed)
    x = images_in(shape, bounds, dtype, gen)
    model = Linear(x[0].numel(), dtype, seed)
    labels = torch.randint(0, 4, (shape[0],), generator=gen)
    for atk in (advx.attacks.GradientAscent(model, lr=0.7, steps=3, bounds=bounds),
                advx.attacks.BoxConstrained(model, c=0.1, steps=3, lr=0.3, bounds=bounds)):
        assert_inside(atk(x, labels), x, None, "l2", bounds)
