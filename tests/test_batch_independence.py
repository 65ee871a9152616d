"""Seeded attacks draw each sample's random numbers from (seed, its dataset index), never
from a stream the batch shares: a sample's result does not depend on the batch size, on
which samples share its batch or on their order (advx._rng)."""
import pytest
import torch

from advx._rng import SampleRandom
from advx.attacks import APGD, APGDT, PGD, Square
from advx.data import load_digits
from advx.eval import evaluate

from _attack_models import row_mlp_digits


@pytest.fixture(scope="module")
def mlp_digits():
    """A float64 MLP whose per-sample outputs and input gradients do not depend on the batch."""
    return row_mlp_digits()


def cascade(model, norm):
    eps = {"linf": 0.1, "l2": 1.0, "l1": 4.0}[norm]
    attacks = [APGD(model, eps, norm, steps=8, seed=3), APGDT(model, eps, norm, steps=8, n_targets=3, seed=3)]
    if norm != "l1":
        attacks += [Square(model, eps, norm, queries=60, seed=3), PGD(model, eps, steps=8, norm=norm, seed=3)]
    return eps, attacks


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_per_sample_results_do_not_depend_on_the_batch_size(mlp_digits, norm):
    model, x, y = mlp_digits
    eps, attacks = cascade(model, norm)
    runs = [evaluate(model, (x, y), eps, norm, attacks=attacks, batch_size=bs, progress=False) for bs in (50, 128, 450)]
    first = runs[0]
    assert first.robust_accuracy < first.clean_accuracy  # the attacks do something
    for other in runs[1:]:
        assert torch.equal(other.robust, first.robust)
        assert torch.equal(other.fooled_by, first.fooled_by)
        assert torch.equal(other.distance.nan_to_num(-1.0), first.distance.nan_to_num(-1.0))


@pytest.mark.parametrize("make", [lambda m: PGD(m, 0.1, steps=5, seed=1), lambda m: PGD(m, 1.0, steps=5, norm="l2", seed=1),
                                  lambda m: PGD(m, 3.0, steps=5, norm="l1", seed=1),
                                  lambda m: APGD(m, 0.1, steps=6, seed=1), lambda m: APGDT(m, 0.1, steps=6, n_targets=2, seed=1),
                                  lambda m: Square(m, 0.1, queries=40, seed=1),
                                  lambda m: Square(m, 1.0, "l2", queries=40, seed=1)],
                         ids=["pgd-linf", "pgd-l2", "pgd-l1", "apgd", "apgd-t", "square-linf", "square-l2"])
def test_a_subset_with_its_indices_gets_the_same_rows(mlp_digits, make):
    model, x, y = mlp_digits
    atk = make(model)
    whole = atk(x[:60], y[:60])
    rows = torch.tensor([41, 3, 17, 59, 8])
    assert torch.equal(atk(x[rows], y[rows], indices=rows), whole[rows])
    # without indices the positions in the batch are the indices: a different draw
    assert not torch.equal(atk(x[rows], y[rows]), whole[rows])


def test_counter_based_generator():
    idx = torch.arange(1000)
    r = SampleRandom(7, idx, "x")
    u = r.uniform((4, 5))
    assert u.shape == (1000, 4, 5) and float(u.min()) > 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01
    n = r.normal((50,), draw=1)
    assert abs(float(n.mean())) < 0.02 and abs(float(n.std()) - 1) < 0.02
    # a row depends only on (seed, stream, draw, index)
    part = SampleRandom(7, idx[[5, 900]], "x").uniform((4, 5))
    assert torch.equal(part, u[[5, 900]])
    assert not torch.equal(SampleRandom(8, idx, "x").uniform((4, 5)), u)
    assert not torch.equal(SampleRandom(7, idx, "y").uniform((4, 5)), u)
    assert not torch.equal(r.uniform((4, 5), draw=1), u)
    k = r.integers(6)
    assert int(k.min()) == 0 and int(k.max()) == 5


def test_bad_indices(mlp_digits):
    model, x, y = mlp_digits
    atk = PGD(model, 0.1, steps=1, seed=0)
    with pytest.raises(ValueError, match="indices must have shape"):
        atk(x[:4], y[:4], indices=torch.arange(3))
    with pytest.raises(TypeError, match="indices must be integers"):
        atk(x[:4], y[:4], indices=torch.zeros(4))
    with pytest.raises(ValueError, match="non-negative"):
        atk(x[:4], y[:4], indices=torch.tensor([0, 1, -2, 3]))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_early_exit_changes_the_work_not_the_result(mlp_digits, norm):
    model, x, y = mlp_digits
    eps, attacks = cascade(model, norm)
    on = evaluate(model, (x, y), eps, norm, attacks=attacks, batch_size=64, progress=False)
    off = evaluate(model, (x, y), eps, norm, attacks=attacks, batch_size=64, progress=False, early_exit=False)
    assert torch.equal(on.robust, off.robust) and torch.equal(on.fooled_by, off.fooled_by)
    assert torch.equal(on.distance.nan_to_num(-1.0), off.distance.nan_to_num(-1.0))
    assert on.stats["forward_backward"] < off.stats["forward_backward"]
    assert set(on.stats["seconds_per_attack"]) == {name for name in on.attacks}


def test_early_exit_saves_most_passes_of_a_pgd_evaluation_where_most_points_fall(mlp_digits):
    model, x, y = mlp_digits
    pgd = [PGD(model, 0.15, steps=100, seed=0)]
    on = evaluate(model, (x, y), 0.15, attacks=pgd, batch_size=64, progress=False)
    off = evaluate(model, (x, y), 0.15, attacks=pgd, batch_size=64, progress=False, early_exit=False)
    assert on.robust_accuracy < 0.3 * on.clean_accuracy  # most points fall
    assert torch.equal(on.robust, off.robust)
    assert off.stats["forward_backward"] >= 3 * on.stats["forward_backward"]
    clean = int(on.clean.sum())
    assert off.stats["forward_backward"] == 100 * clean  # without early exit: every step of every sample


def test_digits_cnn_robust_accuracy_barely_moves_with_the_batch_size(digits_cache_dir):
    """The CNN's convolutions may round differently with the batch size, so a sample on a
    knife's edge can flip; the robust accuracy stays within 0.2 points."""
    from advx.models import train_digits_cnn

    digits_model = train_digits_cnn(digits_cache_dir).eval()
    split = load_digits()
    x, y = split.test_images[:450], split.test_labels[:450]
    attacks = [APGD(digits_model, 0.1, steps=10, seed=0), APGDT(digits_model, 0.1, steps=10, n_targets=3, seed=0),
               Square(digits_model, 0.1, queries=50, seed=0)]
    accs = [evaluate(digits_model, (x, y), 0.1, attacks=attacks, batch_size=bs, progress=False).robust_accuracy
            for bs in (50, 128, 450)]
    assert max(accs) - min(accs) <= 0.002 + 1e-9, accs


def test_the_progress_bar_moves_per_finished_sample(mlp_digits, monkeypatch):
    import advx.eval as ev_module

    updates = []

    class Bar:
        def update(self, n):
            updates.append(n)

        def set_postfix(self, **kwargs):
            pass

        def close(self):
            pass

    monkeypatch.setattr(ev_module, "_progress_bar", lambda total, progress: Bar() if progress else ev_module._NoBar())
    model, x, y = mlp_digits
    eps, attacks = cascade(model, "linf")
    evaluate(model, (x, y), eps, attacks=attacks, batch_size=64, progress=True)
    assert sum(updates) == x.shape[0]
    assert len(updates) > 10  # not once per chunk (200 samples: one chunk)
