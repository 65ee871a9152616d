"""advx.eval.evaluate: the worst case over a cascade of attacks, per sample."""
import json
import math

import pytest
import torch
from torch import nn

from advx.attacks import APGD, APGDT, PGD
from advx.data import load_digits
from advx.eval import EvaluationWarning, evaluate
from advx.models import train_digits_cnn

from _attack_models import images, predicted, small_cnn


@pytest.fixture(scope="module")
def digits(digits_cache_dir):
    model = train_digits_cnn(digits_cache_dir).eval()
    split = load_digits()
    return model, split.test_images[:120], split.test_labels[:120]


def cascade(model):
    return [APGD(model, 0.1, steps=10, seed=0), APGDT(model, 0.1, steps=10, n_targets=3, seed=0)]


def test_worst_case_is_never_weaker_than_its_attacks(digits):
    model, x, y = digits
    ev = evaluate(model, (x, y), 0.1, attacks=cascade(model), batch_size=50, progress=False)
    for atk in cascade(model):
        alone = evaluate(model, (x, y), 0.1, attacks=[atk], batch_size=50, progress=False)
        assert ev.robust_accuracy <= alone.robust_accuracy + 1e-9
    assert ev.robust_accuracy < ev.clean_accuracy


def test_per_sample_fields_are_consistent(digits):
    model, x, y = digits
    ev = evaluate(model, (x, y), 0.1, attacks=cascade(model), batch_size=50, progress=False)
    n = x.shape[0]
    assert ev.clean.shape == ev.robust.shape == ev.fooled_by.shape == ev.distance.shape == (n,)
    with torch.no_grad():
        assert torch.equal(ev.clean, model(x).argmax(1) == y)
    assert not (ev.robust & ~ev.clean).any()
    fooled = ev.fooled_by >= 0
    assert torch.equal(fooled, ev.clean & ~ev.robust)
    assert bool((ev.distance[fooled] <= 0.1).all()) and bool(ev.distance[~fooled].isnan().all())
    assert all(a >= b for a, b in zip(ev.after_attack, ev.after_attack[1:]))
    assert ev.after_attack[-1] == pytest.approx(ev.robust_accuracy)
    d = json.loads(json.dumps(ev.to_dict()))
    assert len(d["per_sample"]) == n and d["attacks"] == ev.attacks
    assert "robust accuracy" in str(ev)


def test_names_make_the_standard_attacks():
    model = small_cnn()
    x = images(6)
    ev = evaluate(model, (x, predicted(model, x)), 0.05, attacks=("fgsm", "pgd"), progress=False)
    assert ev.attacks == ["fgsm", "pgd"] and ev.clean_accuracy == 1.0
    with pytest.raises(ValueError, match="attacks must hold"):
        evaluate(model, (x, predicted(model, x)), 0.05, attacks=("square-x",), progress=False)
    # fgsm in L2 is the fast gradient method (one step of length eps), never an L-inf step
    ev = evaluate(model, (x, predicted(model, x)), 0.5, norm="l2", attacks=("fgsm",), progress=False)
    found = ev.distance[~torch.isnan(ev.distance)]
    assert ev.attacks == ["fgsm"] and (found <= 0.5 + 1e-6).all()


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = small_cnn()

    def forward(self, x):
        return self.inner(x) + 0.1 * torch.randn(x.shape[0], 10)


class Softmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = small_cnn()

    def forward(self, x):
        return self.inner(x).softmax(dim=1)


@pytest.mark.parametrize("model,match", [(Noisy(), "change between two identical forward passes"),
                                         (Softmax(), "look like probabilities")])
def test_model_checks_warn(model, match):
    x = images(4)
    with pytest.warns(EvaluationWarning, match=match) as caught:
        ev = evaluate(model, (x, predicted(model, x)), 0.05, attacks=("fgsm",), progress=False)
    assert any(match in w for w in ev.warnings)
    assert len([w for w in caught if match in str(w.message)]) == 1


def test_no_warning_for_a_healthy_model():
    import warnings

    model = small_cnn()
    x = images(8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ev = evaluate(model, (x, predicted(model, x)), 0.05, attacks=("fgsm", "pgd"), progress=False)
    assert ev.warnings == [] and not math.isnan(ev.robust_accuracy)


def test_square_as_strong_as_torchattacks(digits):
    torchattacks = pytest.importorskip("torchattacks")
    from advx.attacks import Square

    model, x, y = digits
    ours = Square(model, 0.1, queries=300, seed=0)(x, y)
    theirs = torchattacks.Square(model, norm="Linf", eps=0.1, n_queries=300, n_restarts=1, seed=0)(x, y)
    with torch.no_grad():
        r_ours = float((model(ours).argmax(1) == y).float().mean())
        r_theirs = float((model(theirs).argmax(1) == y).float().mean())
    assert r_ours <= r_theirs + 0.01
    assert float((ours - x).abs().max()) <= 0.1


def test_square_pieces():
    from advx.attacks import Square
    from advx.attacks.square import margin, p_schedule

    assert [p_schedule(0.8, q, 10000) for q in (0, 10, 11, 51, 9000)] == [0.8, 0.8, 0.4, 0.2, 0.8 / 512]
    assert p_schedule(0.8, 50, 100) == 0.8 / 128  # rescaled to 10000 queries
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0]])
    torch.testing.assert_close(margin(logits, torch.tensor([0, 0])), torch.tensor([1.0, -3.0]))
    model = small_cnn()
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        Square(model, 0.1, queries=3)(torch.rand(2, 64), torch.zeros(2, dtype=torch.long))
    x = images(5)
    res = Square(model, 0.05, queries=50, seed=0).run(x, predicted(model, x))
    assert torch.equal(res.success, res.first_success >= 0) and not res.zero_grad.any()


def test_square_l2_as_strong_as_torchattacks_and_inside(digits):
    torchattacks = pytest.importorskip("torchattacks")
    from advx.attacks import Square

    model, x, y = digits
    ours = Square(model, 1.0, "l2", queries=200, seed=0)(x, y)
    theirs = torchattacks.Square(model, norm="L2", eps=1.0, n_queries=200, n_restarts=1, seed=0)(x, y)
    with torch.no_grad():
        r_ours = float((model(ours).argmax(1) == y).float().mean())
        r_theirs = float((model(theirs).argmax(1) == y).float().mean())
    assert r_ours <= r_theirs + 0.01
    assert float((ours.double() - x.double()).flatten(1).norm(dim=1).max()) <= 1.0


def test_l2_cascade_runs_square():
    model = small_cnn()
    x = images(4)
    ev = evaluate(model, (x, predicted(model, x)), 0.3, norm="l2", attacks=("pgd", "square"), progress=False)
    assert ev.attacks == ["pgd", "square"] and ev.warnings == []


def test_robust_accuracy_worst_case_row(digits):
    from advx.attacks import FGSM
    from advx.eval import robust_accuracy

    model, x, y = digits
    attacks = [FGSM(model, 0.1), PGD(model, 0.1, steps=10, seed=0), PGD(model, 1.0, steps=10, norm="l2", seed=0)]
    report = robust_accuracy(model, (x, y), attacks, batch_size=50, progress=False)
    assert [r["name"] for r in report.rows] == ["FGSM", "PGD", "PGD"]  # the rows as before
    assert len(report.worst_case) == 1  # only the L-inf budget is shared
    (worst,) = report.worst_case
    assert (worst["norm"], worst["eps"]) == ("linf", 0.1)
    assert worst["robust_accuracy"] <= min(report.rows[0]["robust_accuracy"], report.rows[1]["robust_accuracy"])
    assert "worst case" in str(report) and report.to_dict()["worst_case"] == report.worst_case


def test_l1_default_cascade_is_l1_apgd(digits):
    """norm='l1': the default cascade becomes APGD-CE and APGD-T in their L1 form (Square
    has no L1 form); every distance found is inside the L1 budget."""
    model, x, y = digits
    x, y = x[:40], y[:40]
    ev = evaluate(model, (x, y), 2.0, norm="l1", batch_size=20, progress=False)
    assert ev.attacks == ["apgd-ce", "apgd-t"] and ev.norm == "l1"
    assert ev.robust_accuracy < ev.clean_accuracy
    found = ev.distance[~torch.isnan(ev.distance)]
    assert found.numel() and float(found.max()) <= 2.0
    with pytest.raises(ValueError, match="norm"):
        evaluate(model, (x, y), 2.0, norm="l1", attacks=["square"], progress=False)
