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


def test_robust_accuracy_counts_per_budget_of_a_tensor_eps():
    x = images(4)
    labels = torch.zeros(4, dtype=torch.long)
    atk = advx.attacks.PGD(Constant(), torch.tensor([0.1, 0.1, 0.2, 0.2]), steps=2)
    with pytest.warns(GradientMaskingWarning):
        report = robust_accuracy(Constant(), (x, labels), [atk], progress=False)
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
