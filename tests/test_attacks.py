"""advx.attacks: parity with torchattacks 3.5, budgets, per-sample eps, success
bookkeeping, early stop, determinism, model state, errors."""
import pytest
import torch
import torch.nn.functional as F

import advx
from advx.attacks import FGSM, PGD, BoxConstrained, GradientAscent

from _attack_models import bn_dropout_cnn, images, predicted, small_cnn

# odd batch and image sizes, channels_last and a non-contiguous view
LAYOUTS = ["contiguous", "odd", "channels_last", "noncontiguous"]


def make_inputs(layout, device, batch=37):
    if layout == "odd":
        x = images(batch, (3, 7, 9), device)
    elif layout == "channels_last":
        x = images(batch, (3, 6, 10), device).to(memory_format=torch.channels_last)
    elif layout == "noncontiguous":
        x = images(batch, (1, 9, 8), device).transpose(2, 3)  # [B, 1, 8, 9] view
    else:
        x = images(batch, (1, 8, 8), device)
    model = small_cnn(device, channels=x.shape[1])
    return model, x, predicted(model, x)


@pytest.fixture
def torchattacks():
    return pytest.importorskip("torchattacks", reason="torchattacks 3.5.1 is a test dependency (see Makefile)")


# -- parity with torchattacks --------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("eps", [8 / 255, 0.1])
def test_pgd_linf_equals_torchattacks(device, layout, eps, torchattacks):
    model, x, y = make_inputs(layout, device)
    theirs = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=7, random_start=False)(x, y)
    ours = PGD(model, eps, eps / 4, 7, random_start=False)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-7)
    assert (ours - x).abs().max() > eps / 2  # it did move


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pgd_l2_equals_torchattacks(device, layout, torchattacks):
    model, x, y = make_inputs(layout, device)
    # torchattacks' PGDL2 .view()s the gradient: it takes contiguous images only
    theirs = torchattacks.PGDL2(model, eps=0.5, alpha=0.1, steps=7, random_start=False)(x.contiguous(), y)
    ours = PGD(model, 0.5, 0.1, 7, norm="l2", random_start=False)(x, y)
    torch.testing.assert_close(ours, theirs)
    assert (ours - x).flatten(1).norm(dim=1).max() > 0.25


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fgsm_equals_torchattacks(device, layout, torchattacks):
    model, x, y = make_inputs(layout, device)
    theirs = torchattacks.FGSM(model, eps=0.05)(x, y)
    ours = FGSM(model, 0.05)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-7)


def test_targeted_pgd_equals_torchattacks(device, torchattacks):
    model, x, y = make_inputs("contiguous", device)
    target = (y + 3) % 10
    atk = torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=6, random_start=False)
    atk.set_mode_targeted_by_label(quiet=True)
    ours = PGD(model, 0.1, 0.02, 6, random_start=False, targeted=True)(x, target)
    torch.testing.assert_close(ours, atk(x, target), rtol=0, atol=1e-7)


def test_linf_random_start_draws_like_torchattacks(device, torchattacks):
    model, x, y = make_inputs("odd", device)
    torch.manual_seed(11)
    theirs = torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=3, random_start=True)(x, y)
    torch.manual_seed(11)
    ours = PGD(model, 0.1, 0.02, 3, random_start=True)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-7)


# -- budgets, per-sample eps, the result ---------------------------------------------

@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_stays_in_budget_and_box(device, norm, random_start):
    model, x, y = make_inputs("odd", device)
    eps = 0.07 if norm == "linf" else 0.6
    res = PGD(model, eps, steps=5, norm=norm, random_start=random_start, seed=3).run(x, y)
    delta = (res.adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps * (1 + 1e-5)
    assert float(res.adv.min()) >= 0 and float(res.adv.max()) <= 1
    torch.testing.assert_close(res.norm, size)
    assert float(size.mean()) > eps / 3


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_per_sample_eps_equals_separate_runs(device, norm):
    model, x, y = make_inputs("contiguous", device, batch=30)
    budgets = [0.02, 0.05, 0.1] if norm == "linf" else [0.2, 0.5, 1.0]
    eps = torch.tensor(budgets, device=device).repeat(10)
    together = PGD(model, eps, steps=5, norm=norm, random_start=False).run(x, y)
    for i, e in enumerate(budgets):
        alone = PGD(model, e, steps=5, norm=norm, random_start=False).run(x, y)
        rows = slice(i, None, 3)
        torch.testing.assert_close(together.adv[rows], alone.adv[rows])
        torch.testing.assert_close(together.norm[rows], alone.norm[rows])
        assert torch.equal(together.success[rows], alone.success[rows])


def test_per_sample_eps_random_start_respects_each_budget(device):
    model, x, y = make_inputs("contiguous", device, batch=40)
    eps = torch.tensor([0.01, 0.2], device=device).repeat(20)
    for norm in ("linf", "l2"):
        res = PGD(model, eps, steps=1, alpha=1e-6, norm=norm, seed=0).run(x, y)
        assert bool((res.norm <= eps * (1 + 1e-5)).all())
        assert float(res.norm[1::2].mean()) > 5 * float(res.norm[0::2].mean())


def test_result_bookkeeping(device):
    model, x, y = make_inputs("contiguous", device, batch=64)
    res = PGD(model, 0.08, steps=6, seed=1).run(x, y, record_loss=True)
    with torch.no_grad():
        logits = model(res.adv)
    assert torch.equal(res.success, logits.argmax(1) != y)
    torch.testing.assert_close(res.loss, F.cross_entropy(logits, y, reduction="none"))
    assert res.success.any() and not res.success.all()  # a meaningful mix
    assert bool((res.first_success[res.success] >= 0).all())
    start = PGD(model, 0.08, steps=0 + 1, alpha=1e-9, seed=1).run(x, y)  # the same random start
    assert torch.equal(res.first_success == 0, start.first_success == 0)
    assert bool((res.first_success <= 6).all())
    assert len(res.loss_history) == 7
    assert res.loss_history[-1] == pytest.approx(float(res.loss.mean()), rel=1e-5)
    assert res.loss_history[-1] > res.loss_history[0]
    assert res.adv.dtype == x.dtype and res.first_success.dtype == torch.int64


def test_targeted_attack_reaches_target(device):
    model, x, y = make_inputs("contiguous", device, batch=40)
    with torch.no_grad():
        target = model(x).topk(2, dim=1).indices[:, 1]  # the runner-up class (random weights
        # leave some classes out of reach)
    for norm, eps in (("linf", 0.3), ("l2", 2.0)):
        res = PGD(model, eps, steps=20, norm=norm, targeted=True, seed=0).run(x, target)
        assert torch.equal(res.success, predicted(model, res.adv) == target)
        assert res.success.float().mean() >= 0.9
        untargeted = PGD(model, eps, steps=20, norm=norm, seed=0)(x, y)
        assert (predicted(model, untargeted) == target).float().mean() < res.success.float().mean()


@pytest.mark.parametrize("eps", [0.03, 0.1])  # some samples never flip / all flip early
def test_early_stop_keeps_first_adversarial_iterate(device, eps):
    model, x, y = make_inputs("contiguous", device, batch=40)
    alpha = eps / 8
    res = PGD(model, eps, alpha, 12, random_start=False, early_stop=True).run(x, y)
    assert bool(res.success[res.first_success >= 0].all())
    assert len(set(res.first_success.tolist())) >= 3
    for k in sorted(set(res.first_success.tolist()) - {0}):
        rows = res.first_success == k
        plain = PGD(model, eps, alpha, 12 if k == -1 else k, random_start=False)(x, y)
        torch.testing.assert_close(res.adv[rows], plain[rows])


def test_fgsm_first_success_and_targeted(device):
    model, x, y = make_inputs("contiguous", device)
    res = FGSM(model, 0.1).run(x, y)
    assert set(res.first_success.unique().tolist()) <= {-1, 1}
    target = (y + 1) % 10
    adv = FGSM(model, 0.1, targeted=True)(x, target)
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(F.cross_entropy(model(xg), target), xg)
    torch.testing.assert_close(adv, (x - 0.1 * g.sign()).clamp(0, 1), rtol=0, atol=1e-7)


def test_float64(device):
    model = small_cnn(device, dtype=torch.float64)
    x = images(9, device=device, dtype=torch.float64)
    y = predicted(model, x)
    res = PGD(model, 0.1, steps=3, norm="l2", seed=0).run(x, y)
    assert res.adv.dtype == torch.float64 and res.loss.dtype == torch.float64
    assert float(res.norm.max()) <= 0.1 * (1 + 1e-12)


def test_empty_and_single_sample(device):
    model, x, y = make_inputs("contiguous", device, batch=1)
    res = PGD(model, 0.1, steps=2).run(x[:0], y[:0])
    assert res.adv.shape == (0, 1, 8, 8) and res.success.shape == (0,)
    one = PGD(model, 0.1, steps=2, seed=0).run(x, y)
    assert one.adv.shape == x.shape and one.success.shape == (1,)


# -- determinism, model state, inputs untouched ----------------------------------------

def test_same_seed_same_result(device):
    model, x, y = make_inputs("odd", device)
    for norm in ("linf", "l2"):
        a = PGD(model, 0.1, steps=3, norm=norm, seed=5)(x, y)
        b = PGD(model, 0.1, steps=3, norm=norm, seed=5)(x, y)
        c = PGD(model, 0.1, steps=3, norm=norm, seed=6)(x, y)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_model_state_and_inputs_untouched(device):
    model = bn_dropout_cnn(device)
    model.train()
    model[1].eval()  # a mixed state must come back as it was
    model[0].weight.requires_grad_(False)
    x, state = images(16, device=device), {k: v.clone() for k, v in model.state_dict().items()}
    y = torch.randint(0, 10, (16,), device=device)
    x_before, y_before = x.clone(), y.clone()
    for atk in (PGD(model, 0.1, steps=3, seed=0), FGSM(model, 0.1), GradientAscent(model, 0.5, 3)):
        a, b = atk(x, y), atk(x, y)
        assert torch.equal(a, b)  # dropout off during the attack
    assert [m.training for m in model.modules()] == [True, True, False, True, True, True, True]
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, True, True, True]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # batch-norm statistics untouched
    assert torch.equal(x, x_before) and torch.equal(y, y_before)


def test_runs_under_no_grad(device):
    model, x, y = make_inputs("contiguous", device)
    with torch.no_grad():
        adv = PGD(model, 0.1, steps=2, seed=0)(x, y)
    assert torch.equal(adv, PGD(model, 0.1, steps=2, seed=0)(x, y))


def test_through_normalize_perturbs_pixels(device):
    model = small_cnn(device, channels=3)
    wrapped = advx.Normalize(model, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3]).to(device)
    x = images(12, (3, 8, 8), device)
    y = predicted(wrapped, x)
    res = PGD(wrapped, 0.03, steps=5, seed=0).run(x, y)
    assert float((res.adv - x).abs().max()) <= 0.03 + 1e-7
    assert 0 <= float(res.adv.min()) and float(res.adv.max()) <= 1


# -- gradient ascent, optimizer paths, box-constrained -----------------------------------

def test_gradient_ascent_flips_labels_and_stops(device):
    model, x, y = make_inputs("contiguous", device, batch=20)
    res = GradientAscent(model, lr=2.0, steps=100, bounds=None).run(x, y)  # unboxed ascent
    assert bool(res.success.all())
    # the result is the first iterate that flipped: a manual loop, frozen per sample
    x_ref = x.clone()
    for step in range(int(res.first_success.max())):
        xg = x_ref.clone().requires_grad_()
        (g,) = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
        active = (step < res.first_success).reshape(-1, 1, 1, 1)
        x_ref = torch.where(active, x_ref + 2.0 * g, x_ref)
    torch.testing.assert_close(res.adv, x_ref)
    torch.testing.assert_close(res.norm, (res.adv - x).flatten(1).norm(dim=1))


def manual_optimizer_pgd(model, x, y, eps, norm, lr, steps, optimizer):
    """The attack spelled out: torch.optim on the perturbed input, then projection."""
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=lr, maximize=True),
            "momentum": lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9, maximize=True),
            "adagrad": lambda p: torch.optim.Adagrad(p, lr=lr, maximize=True),
            "rmsprop": lambda p: torch.optim.RMSprop(p, lr=lr, maximize=True),
            "adam": lambda p: torch.optim.Adam(p, lr=lr, maximize=True)}[optimizer]
    x_adv = x.clone().requires_grad_()
    opt = make([x_adv])
    for _ in range(steps):
        (x_adv.grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y, reduction="sum"), x_adv)
        opt.step()
        with torch.no_grad():
            delta = x_adv - x
            advx.reference.project_(delta, eps, norm)
            x_adv.copy_((x + delta).clamp(0, 1))
    return x_adv.detach()


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adagrad", "rmsprop", "adam"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_optimizer_pgd_equals_torch_optim_loop(device, optimizer, norm):
    model, x, y = make_inputs("contiguous", device, batch=21)
    eps = 0.1 if norm == "linf" else 0.8
    lr = 0.05 if optimizer != "sgd" and optimizer != "momentum" else 0.5
    res = PGD(model, eps, steps=6, norm=norm, optimizer=optimizer, lr=lr, random_start=False).run(x, y)
    torch.testing.assert_close(res.adv, manual_optimizer_pgd(model, x, y, eps, norm, lr, 6, optimizer))
    assert float(res.norm.max()) <= eps * (1 + 1e-5)


def test_optimizer_pgd_per_sample_eps(device):
    model, x, y = make_inputs("contiguous", device, batch=20)
    eps = torch.tensor([0.03, 0.1], device=device).repeat(10)
    res = PGD(model, eps, steps=5, optimizer="adam", lr=0.02, random_start=False).run(x, y)
    for i, e in enumerate((0.03, 0.1)):
        alone = PGD(model, e, steps=5, optimizer="adam", lr=0.02, random_start=False)(x, y)
        torch.testing.assert_close(res.adv[i::2], alone[i::2])


def test_box_constrained_targeted(device):
    model, x, y = make_inputs("contiguous", device, batch=16)
    target = (y + 1) % 10
    res = BoxConstrained(model, c=0.05, steps=60, lr=0.05).run(x, target)
    assert res.success.float().mean() >= 0.9
    assert 0 <= float(res.adv.min()) and float(res.adv.max()) <= 1
    # the same problem spelled out with torch.optim.Adam and a clamp
    x_adv = x.clone().requires_grad_()
    opt = torch.optim.Adam([x_adv], lr=0.05)
    for _ in range(60):
        obj = 0.05 * (x_adv - x).flatten(1).norm(dim=1) + F.cross_entropy(model(x_adv), target, reduction="none")
        (x_adv.grad,) = torch.autograd.grad(obj.sum(), x_adv)
        opt.step()
        with torch.no_grad():
            x_adv.clamp_(0, 1)
    torch.testing.assert_close(res.adv, x_adv.detach())


# -- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, word", [
    (dict(eps=-0.1), ValueError, "eps"),
    (dict(eps=float("nan")), ValueError, "eps"),
    (dict(eps="0.1"), TypeError, "eps"),
    (dict(eps=torch.tensor([[0.1]])), ValueError, "eps"),
    (dict(eps=0.1, alpha=0.0), ValueError, "alpha"),
    (dict(eps=0.1, steps=0), ValueError, "steps"),
    (dict(eps=0.1, steps=2.5), TypeError, "steps"),
    (dict(eps=0.1, norm="l3"), ValueError, "norm"),
    (dict(eps=0.1, optimizer="lbfgs"), ValueError, "optimizer"),
    (dict(eps=0.1, bounds=(1.0, 0.0)), ValueError, "bounds"),
    (dict(eps=0.1, seed=1.5), TypeError, "seed"),
    (dict(eps=0.1, lr=0.01), ValueError, "lr"),
])
def test_bad_arguments(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        PGD(small_cnn(), **kwargs)


def test_bad_inputs(device):
    model, x, y = make_inputs("contiguous", device, batch=4)
    atk = PGD(model, 0.1, steps=1)
    with pytest.raises(TypeError, match="images"):
        atk(x.numpy() if device == "cpu" else x.cpu().numpy(), y)
    with pytest.raises(TypeError, match="labels"):
        atk(x, y.float())
    with pytest.raises(ValueError, match="labels"):
        atk(x, y[:3])
    with pytest.raises(ValueError, match="images"):
        atk(x * 3, y)  # normalized images handed to a pixel-space attack
    with pytest.raises(ValueError, match="images"):
        atk(x.masked_fill(x > 0.5, float("nan")), y)
    with pytest.raises(ValueError, match="eps"):
        PGD(model, torch.full((3,), 0.1, device=device), steps=1)(x, y)
    with pytest.raises(TypeError, match="model"):
        PGD("model", 0.1)
    with pytest.raises(RuntimeError, match="inference_mode"):
        with torch.inference_mode():
            atk(x, y)


# -- model outputs, labels and non-finite logits (reliability) -----------------------------

class _Wrapped(torch.nn.Module):
    """The same classifier returning its logits in another container."""

    def __init__(self, model, kind):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, x):
        z = self.model(x)
        if self.kind == "tuple":
            return z, x.mean()
        if self.kind == "dict":
            return {"logits": z, "hidden": x}
        return type("Output", (), {"logits": z})()


@pytest.mark.parametrize("kind", ["tuple", "dict", "object"])
def test_models_returning_logits_in_a_container(kind):
    model, x, y = make_inputs("contiguous", "cpu", batch=12)
    want = PGD(model, 0.1, steps=3, seed=0).run(x, y)
    got = PGD(_Wrapped(model, kind), 0.1, steps=3, seed=0).run(x, y)
    torch.testing.assert_close(got.adv, want.adv)
    assert torch.equal(got.success, want.success)
    report = advx.eval.robust_accuracy(_Wrapped(model, kind), (x, y), [FGSM(_Wrapped(model, kind), 0.05)],
                                       progress=False)
    assert report is not None


def test_model_returning_something_else_names_model():
    model, x, y = make_inputs("contiguous", "cpu", batch=4)
    with pytest.raises(TypeError, match="model must return logits"):
        FGSM(lambda inp: {"scores": model(inp)}, 0.1)(x, y)


@pytest.mark.parametrize("bad", [-100, -1, 10])
def test_labels_outside_the_classes_are_refused(bad):
    model, x, y = make_inputs("contiguous", "cpu", batch=6)
    y[2] = bad
    for atk in (FGSM(model, 0.1), PGD(model, 0.1, steps=2), GradientAscent(model, 0.5, 2)):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
            atk.run(x, y)


def test_nan_logits_never_count_as_success():
    model, x, y = make_inputs("contiguous", "cpu", batch=8)

    def nan_model(inp):
        return model(inp) * float("nan")

    for atk in (FGSM(nan_model, 0.1), PGD(nan_model, 0.1, steps=3), GradientAscent(nan_model, 0.5, 3)):
        res = atk.run(x, y)
        assert not bool(res.success.any()), type(atk).__name__


def test_gradient_ascent_stays_in_the_pixel_box_by_default():
    model, x, y = make_inputs("contiguous", "cpu", batch=10)
    adv = GradientAscent(model, lr=50.0, steps=20, early_stop=False)(x, y)
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    free = GradientAscent(model, lr=50.0, steps=20, early_stop=False, bounds=None)(x, y)
    assert float(free.min()) < 0.0 or float(free.max()) > 1.0
