"""Square as a continuously batched stream (advx.attacks.stream): every sample searches at
its own query count, so rows at different queries share a batch; a sample's result must
still be the one it gets alone, whatever the working batch size and whether a fooled
sample leaves the batch or stays in it until out of queries."""
import pytest
import torch
from torch import nn

from advx._rng import SampleRandom
from advx.attacks import Square

from _attack_models import row_mlp_digits


@pytest.fixture(scope="module")
def mlp_digits():
    """A float64 MLP whose per-sample outputs do not depend on the batch."""
    model, x, y = row_mlp_digits()
    return model, x[:48], y[:48]


class Counted(nn.Module):
    """The model, counting the rows it is called on."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows, self.calls = model, 0, 0

    def forward(self, x):
        self.rows += x.shape[0]
        self.calls += 1
        return self.model(x)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_results_do_not_depend_on_the_working_batch_or_early_exit(mlp_digits, norm, eps):
    model, x, y = mlp_digits
    counted = Counted(model)
    atk = Square(counted, eps, norm, queries=100, seed=4)
    runs = {}
    for bs in (7, 64, None):
        for early_exit in (True, False):
            counted.rows = counted.calls = 0
            r = atk._run(x, y, record_loss=False, report=True, batch_size=bs, early_exit=early_exit)
            runs[bs, early_exit] = r, counted.rows - x.shape[0], counted.calls - 1  # less the final pass
    ref, rows, calls = runs[None, True]
    assert 0 < int(ref.success.sum()) < x.shape[0]  # some samples fall, not all
    first = ref.first_success[ref.success]
    assert int(first.min()) < int(first.max())  # they leave at different queries
    for (bs, early_exit), (r, n_rows, n_calls) in runs.items():
        assert torch.equal(r.adv, ref.adv), (bs, early_exit)
        assert torch.equal(r.success, ref.success) and torch.equal(r.first_success, ref.first_success)
        assert torch.equal(r.loss, ref.loss) and torch.equal(r.nonfinite, ref.nonfinite)
        if early_exit:
            # a fooled sample spends no pass after its success, a surviving one all queries
            assert n_rows == rows == int(torch.where(ref.success, ref.first_success + 1, atk.queries).sum())
        else:
            assert n_rows == atk.queries * x.shape[0]  # every sample every query
        if bs == 7:
            assert n_calls >= -(-n_rows // 7)  # no more than 7 rows a call
    # a refilled batch of 7 keeps its rows busy: few calls beyond the rows / 7 it needs
    n_rows, n_calls = runs[7, True][1:]
    assert n_calls <= n_rows // 7 + atk.queries


def test_a_sample_alone_gets_its_result_in_the_stream(mlp_digits):
    model, x, y = mlp_digits
    atk = Square(model, 1.0, "l2", queries=60, seed=2)
    whole = atk._run(x[:40], y[:40], record_loss=False, report=True, batch_size=5, early_exit=True)
    for b in (0, 13, 39):
        alone = atk.run(x[b:b + 1], y[b:b + 1], indices=torch.tensor([b]))
        assert torch.equal(alone.adv[0], whole.adv[b]) and int(alone.first_success[0]) == int(whole.first_success[b])


def test_a_tensor_draw_is_each_rows_scalar_draw():
    idx = torch.tensor([0, 5, 2 ** 33 + 7, 17, 900])
    draw = torch.tensor([0, 3, 12345, 2 ** 32 + 1, 7])
    high = torch.tensor([1, 6, 9, 2, 1000])
    r = SampleRandom(11, idx, "s")
    for b in range(idx.shape[0]):
        one = r.subset(torch.tensor([b]))
        d = int(draw[b])
        assert torch.equal(r.uniform((3, 2), draw, dtype=torch.float64)[b],
                           one.uniform((3, 2), d, dtype=torch.float64)[0])
        assert torch.equal(r.normal((4,), draw)[b], one.normal((4,), d)[0])
        assert torch.equal(r.signs((2, 1, 1), draw)[b], one.signs((2, 1, 1), d)[0])
        assert int(r.integers(high, draw)[b]) == int(one.integers(int(high[b]), d)[0])
    # a tensor of one draw is that draw, and an int high the same as a constant tensor
    same = torch.full((5,), 9)
    assert torch.equal(r.uniform((6,), same), r.uniform((6,), 9))
    assert torch.equal(r.integers(torch.full((5,), 4), same), r.integers(4, 9))
    k = r.integers(high, draw)
    assert bool((k >= 0).all()) and bool((k < high).all())


def test_scalar_draws_keep_their_bits():
    """Seeded results of every attack rest on these numbers: a change of the generator
    would change them all."""
    r = SampleRandom(3, torch.tensor([0, 1, 2 ** 40]), "Square/window")
    assert r.integers(7, 4).tolist() == [5, 1, 4]
    assert r.uniform((2,), 1, dtype=torch.float64).mul(1 << 24).sub(0.5).long().tolist() == \
        [[15964558, 7827715], [2562295, 12099440], [11769578, 16677738]]
    assert r.signs((3,), 2).tolist() == [[-1.0, 1.0, 1.0], [1.0, 1.0, -1.0], [-1.0, 1.0, -1.0]]
