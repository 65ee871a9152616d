"""advx.bench's evaluation benchmark keeps its competitor honest: torchattacks' cascade
runs in batches of the same size as advx's working batch (as AutoAttack's ``bs``), each
attack on the points still robust (no timing asserted)."""
import pytest
import torch
from torch import nn

from advx import bench

ta = pytest.importorskip("torchattacks")


class _Widths(nn.Module):
    """A small MLP that records the batch size of every call."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
        self.widths = []

    def forward(self, x):
        self.widths.append(x.shape[0])
        return self.net(x)


@pytest.mark.parametrize("batch_size", [7, 64])
def test_torchattacks_cascade_runs_in_batches_of_batch_size(batch_size):
    torch.manual_seed(0)
    model = _Widths().eval()
    x = torch.rand(30, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    model.widths.clear()
    acc, fb, fw = bench.torchattacks_cascade(ta, model, x, y, steps=3, queries=10, seed=0, batch_size=batch_size)
    assert 0.0 <= acc <= 1.0 and fb > 0 and fw > 0
    attack_calls = model.widths[1:]  # after the clean pass over all 30
    assert max(attack_calls) == min(batch_size, 30)  # never more rows than the batch, the first batch full


def test_model_eval_timing_rows_for_any_model():
    torch.manual_seed(0)
    model = _Widths().eval()
    x = torch.rand(20, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    rows = bench.model_eval_timing("mlp", model, x, y, 0.05, steps=2, queries=5, batch_size=8,
                                   options=({}, {"early_exit": False}))
    assert [r["impl"] for r in rows] == ["advx.eval.evaluate", "advx.eval.evaluate, early_exit=False",
                                         "torchattacks 3.5.1 cascade"]
    default, off, theirs = rows
    assert default["speedup_of_advx"] == 1.0
    assert off["speedup_of_advx"] == pytest.approx(off["seconds"] / default["seconds"])
    assert theirs["speedup_of_advx"] == pytest.approx(theirs["seconds"] / default["seconds"])
    assert default["robust_accuracy"] == off["robust_accuracy"]  # early exit changes the work, not the result
    assert off["forward_backward"] >= default["forward_backward"] > 0
    assert all(r["size"] == "20 images, 2 steps, 5 queries" for r in rows)
