"""advx.eval: robust_accuracy over a data set, random_sphere against a known answer."""
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from advx.attacks import FGSM, PGD, GradientAscent
from advx.eval import RobustnessReport, random_sphere, robust_accuracy

from _attack_models import images, predicted, small_cnn


def tiny_dataset(device, n=50):
    model = small_cnn(device)
    x = images(n, device=device, seed=3)
    y = predicted(model, x)
    y[::4] = (y[::4] + 1) % 10  # a quarter of the labels disagree with the model
    return model, x, y


def test_clean_and_robust_accuracy(device):
    model, x, y = tiny_dataset(device)
    attacks = [FGSM(model, 0.03), PGD(model, 0.03, steps=5, seed=0),
               PGD(model, 0.3, steps=5, norm="l2", seed=0)]
    report = robust_accuracy(model, (x, y), attacks, batch_size=16, progress=False)
    assert isinstance(report, RobustnessReport)
    assert report.n_samples == 50
    manual_clean = (predicted(model, x) == y).float().mean().item()
    assert report.clean_accuracy == pytest.approx(manual_clean)
    assert [r["name"] for r in report.rows] == ["FGSM", "PGD", "PGD"]
    assert [r["norm"] for r in report.rows] == ["linf", "linf", "l2"]
    for row in report.rows:
        assert set(row) >= {"name", "norm", "eps", "robust_accuracy"}
        assert 0 <= row["robust_accuracy"] < report.clean_accuracy
    # PGD-5 with a random start against FGSM: stronger up to a sample's luck
    assert report.rows[1]["robust_accuracy"] <= report.rows[0]["robust_accuracy"] + 0.02 + 1e-9
    # the FGSM row, counted by hand on the correctly classified samples
    correct = predicted(model, x) == y
    adv = FGSM(model, 0.03)(x[correct], y[correct])
    manual_robust = (predicted(model, adv) == y[correct]).sum().item() / 50
    assert report.rows[0]["robust_accuracy"] == pytest.approx(manual_robust)


def test_data_forms_agree(device):
    model, x, y = tiny_dataset(device, n=30)
    attacks = {"fgsm": FGSM(model, 0.05), "pgd-l2": PGD(model, 0.5, steps=3, norm="l2", random_start=False)}
    from_pair = robust_accuracy(model, (x, y), attacks, batch_size=7, progress=False).to_dict()
    from_dataset = robust_accuracy(model, TensorDataset(x, y), attacks, batch_size=30, progress=False).to_dict()
    from_loader = robust_accuracy(model, DataLoader(TensorDataset(x, y), batch_size=4), attacks,
                                  progress=True).to_dict()
    assert from_pair == from_dataset == from_loader
    assert [r["name"] for r in from_pair["attacks"]] == ["fgsm", "pgd-l2"]
    json.dumps(from_pair)


def test_budgets_give_one_row_per_budget(device):
    model, x, y = tiny_dataset(device)
    budgets = [0.01, 0.03, 0.1]
    together = robust_accuracy(model, (x, y), [PGD(model, 0.5, 0.02, 5, random_start=False)], budgets=budgets,
                               batch_size=25, progress=False)
    separate = robust_accuracy(model, (x, y), [PGD(model, e, 0.02, 5, random_start=False) for e in budgets],
                               batch_size=25, progress=False)
    assert [r["eps"] for r in together.rows] == pytest.approx(budgets)
    got = [r["robust_accuracy"] for r in together.rows]
    want = [r["robust_accuracy"] for r in separate.rows]
    # one tiled call per batch versus one call per budget: the same attack up to rounding
    assert got == pytest.approx(want, abs=1.5 / 50)
    assert got[0] > got[1] > got[2]  # the budgets really differ


def test_an_eps_tensor_is_per_sample_never_a_set_of_budgets(device):
    # 64 per-sample budgets used to become 64 rows over a 64x tiled batch
    model, x, y = tiny_dataset(device)
    per_sample = torch.rand(len(x), device=device) * 0.1 + 0.01
    with pytest.raises(ValueError, match="per-sample eps tensor.*budgets="):
        robust_accuracy(model, (x, y), [PGD(model, per_sample, 0.02, 5)], progress=False)
    one = robust_accuracy(model, (x, y), [PGD(model, torch.tensor(0.05), 0.02, 5, seed=0)], progress=False)
    same = robust_accuracy(model, (x, y), [PGD(model, 0.05, 0.02, 5, seed=0)], progress=False)
    assert [r["robust_accuracy"] for r in one.rows] == [r["robust_accuracy"] for r in same.rows]
    # budgets= overrides every budgeted attack, in sorted order, and is checked
    rep = robust_accuracy(model, (x, y), [FGSM(model, 0.3)], budgets=torch.tensor([0.1, 0.02]), progress=False)
    assert [r["eps"] for r in rep.rows] == pytest.approx([0.02, 0.1])
    for bad in ([], [0.1, -1.0], [float("nan")]):
        with pytest.raises(ValueError, match="budgets"):
            robust_accuracy(model, (x, y), [FGSM(model, 0.3)], budgets=bad, progress=False)


def test_report_table_and_dict(device):
    model, x, y = tiny_dataset(device, n=20)
    report = robust_accuracy(model, (x, y), [FGSM(model, 0.02), GradientAscent(model, 1.0, 5)], progress=False)
    text = str(report)
    assert "clean" in text and "FGSM" in text and "GradientAscent" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["clean_accuracy"] == report.clean_accuracy
    assert data["attacks"][1]["eps"] is None


def test_model_mode_preserved_and_errors(device):
    model, x, y = tiny_dataset(device, n=10)
    model.train()
    robust_accuracy(model, (x, y), [FGSM(model, 0.02)], progress=False)
    assert all(m.training for m in model.modules())
    with pytest.raises(ValueError, match="targeted"):
        robust_accuracy(model, (x, y), [FGSM(model, 0.02, targeted=True)], progress=False)
    with pytest.raises(TypeError, match="data"):
        robust_accuracy(model, x, [FGSM(model, 0.02)], progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        robust_accuracy(model, (x, y), [FGSM(model, 0.02)], batch_size=0, progress=False)
    with pytest.raises(ValueError, match="empty"):
        robust_accuracy(model, (x[:0], y[:0]), [FGSM(model, 0.02)], progress=False)
    with pytest.raises(TypeError, match="attacks"):
        robust_accuracy(model, (x, y), [lambda a, b: a], progress=False)


class Threshold(nn.Module):
    """Class 1 where the first coordinate exceeds 0.5: the flip probability on a
    sphere has a closed form."""

    def forward(self, x):
        u = x.flatten(1)[:, :1] - 0.5
        return torch.cat([-u, u], dim=1)


@pytest.mark.parametrize("dims", [2, 3])
def test_random_sphere_matches_geometry(device, dims):
    offset = 0.1
    x = torch.full((3, 1, 1, dims), 0.5, device=device)
    x[:, 0, 0, 0] += offset  # distance 0.1 from the decision boundary, class 1
    radius = torch.tensor([0.05, 0.2, 0.4], device=device)
    frac = random_sphere(Threshold(), x, radius, n=4000, clamp=False, seed=0, batch_size=1000)
    assert frac.shape == (3,) and frac.dtype == torch.float32
    # a uniform direction u flips the label when u_0 < -offset / r
    if dims == 2:
        expected = [math.acos(min(1.0, offset / r)) / math.pi for r in (0.05, 0.2, 0.4)]
    else:
        expected = [max(0.0, (1 - offset / r) / 2) for r in (0.05, 0.2, 0.4)]
    assert frac[0].item() == 0.0
    torch.testing.assert_close(frac.cpu(), torch.tensor(expected), rtol=0, atol=0.03)


def test_random_sphere_on_a_cnn(device):
    model = small_cnn(device)
    x = images(6, device=device)
    tiny = random_sphere(model, x, 1e-6, n=50, seed=0)
    assert torch.equal(tiny, torch.zeros(6, device=device))
    big = random_sphere(model, x, 3.0, n=200, seed=0, batch_size=128)
    assert bool(((big >= 0) & (big <= 1)).all())
    assert torch.equal(big, random_sphere(model, x, 3.0, n=200, seed=0, batch_size=128))
    wrong = (predicted(model, x) + 1) % 10
    assert torch.equal(random_sphere(model, x, 1e-6, n=20, labels=wrong, seed=0), torch.ones(6, device=device))
    with pytest.raises(ValueError, match="radius"):
        random_sphere(model, x, -1.0)
    with pytest.raises(ValueError, match="radius"):
        random_sphere(model, x, torch.ones(5, device=device))
    with pytest.raises(ValueError, match="n must"):
        random_sphere(model, x, 0.1, n=0)
