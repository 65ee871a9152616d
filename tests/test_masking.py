"""Gradient masking and non-finite models (issue 10, kinds 3 and 12): per-sample flags in
AttackResult, NaN never a success and never spread into the images, and the counts and
the one warning of robust_accuracy."""
import warnings

import pytest
import torch
from torch import nn

import advx
from advx.eval import GradientMaskingWarning, robust_accuracy

from _attack_models import images, predicted, small_cnn

ATTACKS = {
    "pgd-linf": lambda m: advx.attacks.PGD(m, 0.1, steps=3, seed=0),
    "pgd-l2": lambda m: advx.attacks.PGD(m, 0.5, steps=3, norm="l2", seed=0),
    "pgd-linf-adam": lambda m: advx.attacks.PGD(m, 0.1, steps=3, optimizer="adam", seed=0),
    "pgd-l2-adam": lambda m: advx.attacks.PGD(m, 0.5, steps=3, norm="l2", optimizer="adam", seed=0),
    "fgsm": lambda m: advx.attacks.FGSM(m, 0.1),
    "ascent": lambda m: advx.attacks.GradientAscent(m, lr=0.5, steps=3),
    "box": lambda m: advx.attacks.BoxConstrained(m, c=0.1, steps=3, targeted=False),
}


class Constant(nn.Module):
    """Logits that do not depend on the input: every input gradient is exactly zero."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.3, -0.2, 0.1], dtype=dtype))

    def forward(self, x):
        return self.bias.expand(x.shape[0], 3) + 0 * x.flatten(1).sum(dim=1, keepdim=True)


class NaNFor(nn.Module):
    """A working model whose logits are NaN for the samples at ``rows``."""

    def __init__(self, rows, dtype=torch.float32):
        super().__init__()
        self.inner = small_cnn(dtype=dtype)
        self.rows = rows

    def forward(self, x):
        out = self.inner(x).clone()
        out[self.rows] = float("nan")
        return out


@pytest.mark.parametrize("name", list(ATTACKS))
def test_zero_gradient_is_flagged(name):
    x = images(6)
    res = ATTACKS[name](Constant()).run(x, torch.zeros(6, dtype=torch.long))
    assert res.zero_grad.tolist() == [True] * 6
    assert res.nonfinite.tolist() == [False] * 6
    assert res.masked.all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_nan_logits_flagged_never_success_never_spread(name, dtype):
    x = images(6, dtype=dtype)
    model = NaNFor([1, 4], dtype=dtype)
    labels = predicted(small_cnn(dtype=dtype), x)
    res = ATTACKS[name](model).run(x, labels)
    assert res.nonfinite.tolist() == [False, True, False, False, True, False]
    assert not res.success[[1, 4]].any()
    assert torch.isfinite(res.adv).all()
    if name in ("fgsm", "ascent", "box"):  # no random start: a NaN step leaves the sample where it was
        assert torch.equal(res.adv[[1, 4]], x[[1, 4]])
    assert not res.zero_grad.any()


@pytest.mark.parametrize("name", list(ATTACKS))
def test_healthy_model_has_no_flags(name):
    model = small_cnn()
    x = images(8)
    res = ATTACKS[name](model).run(x, predicted(model, x))
    assert not res.zero_grad.any() and not res.nonfinite.any()


def test_flags_on_an_empty_batch():
    res = advx.attacks.PGD(small_cnn(), 0.1).run(images(0), torch.zeros(0, dtype=torch.long))
    assert res.zero_grad.shape == (0,) and res.nonfinite.shape == (0,)


def test_robust_accuracy_counts_and_warns_once():
    x = images(10)
    labels = torch.zeros(10, dtype=torch.long)  # Constant predicts class 0: all correct
    attacks = {"pgd": advx.attacks.PGD(Constant(), 0.1, steps=2), "fgsm": advx.attacks.FGSM(Constant(), 0.1)}
    with pytest.warns(GradientMaskingWarning) as caught:
        report = robust_accuracy(Constant(), (x, labels), attacks, progress=False)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "of 10 attacked samples" in message and "pgd" in message and "10 zero gradient" in message
    assert [r["zero_grad"] for r in report.rows] == [10, 10]
    assert [r["nonfinite"] for r in report.rows] == [0, 0]
    assert report.to_dict()["attacks"][0]["zero_grad"] == 10
    assert "zero grad" in str(report)


def test_robust_accuracy_counts_per_budget():
    x = images(4)
    labels = torch.zeros(4, dtype=torch.long)
    atk = advx.attacks.PGD(Constant(), 0.1, steps=2)
    with pytest.warns(GradientMaskingWarning):
        report = robust_accuracy(Constant(), (x, labels), [atk], budgets=[0.1, 0.2], progress=False)
    assert [r["zero_grad"] for r in report.rows] == [4, 4]


def test_robust_accuracy_healthy_model_does_not_warn():
    model = small_cnn()
    x = images(12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = robust_accuracy(model, (x, predicted(model, x)), [advx.attacks.PGD(model, 0.05, steps=2)],
                                      progress=False)
    assert report.rows[0]["zero_grad"] == 0 and report.rows[0]["nonfinite"] == 0
    assert "zero grad" not in str(report)


class DeadFor(nn.Module):
    """A linear model whose input is multiplied by a mask read (detached) from the first
    pixel: a sample whose first pixel is below 0.5 gets an input gradient of exactly zero
    (a dead region), the others a nonzero one."""

    def __init__(self, features=64, dtype=torch.float32):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.weight = nn.Parameter(torch.randn(3, features, generator=gen).to(dtype))

    def forward(self, x):
        flat = x.flatten(1)
        alive = (flat[:, :1] > 0.5).to(flat.dtype).detach()
        return (flat * alive) @ self.weight.t()


class NaNAtCall(nn.Module):
    """A working model whose logits turn NaN for the samples at ``rows`` from its
    ``call``-th call on (0-based): here only the attack's final evaluation pass."""

    def __init__(self, rows, call):
        super().__init__()
        self.inner = small_cnn()
        self.rows, self.call, self.calls = rows, call, 0

    def forward(self, x):
        out = self.inner(x).clone()
        if self.calls >= self.call:
            out[self.rows] = float("nan")
        self.calls += 1
        return out


def _marked_images(alive):
    """images(len(alive)) whose first pixel is 1 (alive) or 0 (dead): a step of 0.1 keeps it there."""
    x = images(len(alive))
    x.view(len(alive), -1)[:, 0] = torch.tensor([1.0 if a else 0.0 for a in alive])
    return x


@pytest.mark.parametrize("name", ["pgd-linf", "pgd-linf-adam", "fgsm", "box"])
def test_zero_gradient_flags_exactly_the_dead_samples(name):
    alive = [True, False, True, True, False, False]
    x = _marked_images(alive)
    model = DeadFor()
    res = ATTACKS[name](model).run(x, predicted(model, x))
    assert res.zero_grad.tolist() == [not a for a in alive]
    assert res.masked.tolist() == [not a for a in alive]
    assert not res.nonfinite.any()
    assert res.zero_grad.dtype == torch.bool and res.zero_grad.device == x.device


@pytest.mark.parametrize("name", ["pgd-linf", "fgsm"])
def test_non_finite_logits_at_the_final_pass_are_flagged(name):
    steps = 1 if name == "fgsm" else 3
    model = NaNAtCall([2], call=steps)  # the steps run clean, the final forward is NaN for sample 2
    x = images(5)
    res = ATTACKS[name](model).run(x, predicted(small_cnn(), x))
    assert res.nonfinite.tolist() == [False, False, True, False, False]
    assert not res.success[2]
    assert not res.zero_grad.any()


def test_flags_without_the_report_pass_cover_the_steps():
    x = _marked_images([True, False, True])
    res = advx.attacks.PGD(DeadFor(), 0.1, steps=2, seed=0)._run(x, predicted(DeadFor(), x), record_loss=False,
                                                                 report=False)
    assert res.success is None
    assert res.zero_grad.tolist() == [False, True, False]


class _Float32Iterate(advx.attacks.GradientAscent):
    """Gradient ascent that keeps its iterate in float32 for half-precision images."""

    def _attack(self, images, labels, record_loss, report=True):
        x_adv = images.float().requires_grad_(True)

        def update(x, grad):
            with torch.no_grad():
                x.add_(0.5 * grad).clamp_(0, 1)

        return self._loop(images, labels, x_adv, self.steps, update, record_loss=record_loss,
                          report=report, early_stop=False, mean_grad=False)


def test_bf16_model_with_a_float32_iterate():
    """The loop casts the iterate to the images' dtype before the model (a bf16 model
    rejects float32 inputs) and returns adv in the images' dtype."""
    model = small_cnn(dtype=torch.bfloat16)
    x = images(6, dtype=torch.bfloat16)
    atk = _Float32Iterate(model, lr=0.5, steps=3)
    res = atk.run(x, predicted(model, x))
    assert res.adv.dtype == torch.bfloat16 and res.adv.shape == x.shape
    assert torch.isfinite(res.adv.float()).all() and not torch.equal(res.adv, x)
    assert not res.zero_grad.any() and not res.nonfinite.any()
    assert atk(x, predicted(model, x)).dtype == torch.bfloat16


@pytest.mark.parametrize("name", list(ATTACKS))
def test_bf16_healthy_and_zero_gradient(name):
    model = small_cnn(dtype=torch.bfloat16)
    x = images(6, dtype=torch.bfloat16)
    res = ATTACKS[name](model).run(x, predicted(model, x))
    assert res.adv.dtype == torch.bfloat16
    assert not res.zero_grad.any() and not res.nonfinite.any()
    res = ATTACKS[name](Constant(torch.bfloat16)).run(x, torch.zeros(6, dtype=torch.long))
    assert res.zero_grad.all() and not res.nonfinite.any()


def test_adv_is_a_copy_not_the_iterate():
    model = small_cnn()
    x = images(4)
    res = advx.attacks.FGSM(model, 0.1).run(x, predicted(model, x))
    assert res.adv.dtype == x.dtype and not res.adv.requires_grad
    res2 = advx.attacks.FGSM(model, 0.1).run(x, predicted(model, x))
    assert torch.equal(res.adv, res2.adv) and res.adv.data_ptr() != res2.adv.data_ptr()


def test_robust_accuracy_counts_non_finite_and_warns_once():
    x = images(8)
    model = NaNFor([0, 5])  # rows 0 and 5 of every batch it sees are NaN
    labels = predicted(small_cnn(), x)
    labels[[0, 5]] = 0  # the argmax of a NaN row is 0: all 8 are "correct", all 8 attacked
    attacks = [advx.attacks.FGSM(model, 0.05), advx.attacks.PGD(model, 0.05, steps=2, seed=0)]
    with pytest.warns(GradientMaskingWarning) as caught:
        report = robust_accuracy(model, (x, labels), attacks, progress=False)
    assert report.clean_accuracy == 1.0
    assert len(caught) == 1
    assert [r["nonfinite"] for r in report.rows] == [2, 2]
    assert [r["zero_grad"] for r in report.rows] == [0, 0]
    message = str(caught[0].message)
    assert "of 8 attacked samples" in message and "2 non-finite" in message
    assert "non-finite" in str(report)


def test_robust_accuracy_counts_a_non_finite_final_pass_of_the_evaluated_model():
    """The attack's own steps are clean; the evaluated model's pass on adv is NaN for
    one sample: counted as non-finite."""
    x = images(6)
    labels = predicted(small_cnn(), x)
    evaluated = NaNAtCall([3], call=1)  # call 0: the clean accuracy pass
    with pytest.warns(GradientMaskingWarning, match="1 non-finite"):
        report = robust_accuracy(evaluated, (x, labels), [advx.attacks.FGSM(small_cnn(), 0.05)], progress=False)
    assert report.rows[0]["nonfinite"] == 1 and report.rows[0]["zero_grad"] == 0
