"""APGD and APGD-T: strength against torchattacks 3.5.1 on the digits CNN (same steps,
restarts and seed), the checkpoint schedule, the DLR losses, budgets and bad input."""
import pytest
import torch

import advx
from advx.attacks import APGD, APGDT
from advx.attacks.apgd import _checkpoints, dlr_loss, targeted_dlr_loss
from advx.data import load_digits
from advx.models import train_digits_cnn

from _attack_models import forbid_syncs, images, predicted, small_cnn


@pytest.fixture(scope="module")
def digits(digits_cache_dir):
    model = train_digits_cnn(digits_cache_dir).eval()
    split = load_digits()
    return model, split.test_images[:200], split.test_labels[:200]


def robust(model, adv, y):
    with torch.no_grad():
        return float((model(adv).argmax(1) == y).float().mean())


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_apgd_ce_as_strong_as_torchattacks(digits, norm, eps):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits
    ours = APGD(model, eps, norm, steps=100, seed=0)(x, y)
    theirs = torchattacks.APGD(model, norm="Linf" if norm == "linf" else "L2", eps=eps, steps=100, n_restarts=1,
                               seed=0, loss="ce")(x, y)
    assert robust(model, ours, y) <= robust(model, theirs, y) + 0.01


def test_apgd_t_as_strong_as_torchattacks(digits):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits
    ours = APGDT(model, 0.1, "linf", steps=100, seed=0)(x, y)
    theirs = torchattacks.APGDT(model, norm="Linf", eps=0.1, steps=100, n_restarts=1, seed=0)(x, y)
    assert robust(model, ours, y) <= robust(model, theirs, y) + 0.01


def test_apgd_beats_or_matches_pgd(digits):
    model, x, y = digits
    pgd = advx.attacks.PGD(model, 0.1, steps=20, seed=0)(x, y)
    apgd = APGD(model, 0.1, steps=20, seed=0)(x, y)
    assert robust(model, apgd, y) <= robust(model, pgd, y) + 0.01


def test_apgd_l1_beats_or_matches_pgd_l1(digits):
    """L1 APGD (adaptive sparsity, exact L1 ∩ box projection) at least as strong as the
    sparse L1 PGD at the same steps, and inside the budget."""
    model, x, y = digits
    eps = 3.0
    pgd = advx.attacks.PGD(model, eps, norm="l1", alpha=eps / 4, steps=30, seed=0)(x, y)
    res = APGD(model, eps, "l1", steps=30, seed=0).run(x, y)
    assert robust(model, res.adv, y) <= robust(model, pgd, y) + 0.01
    assert robust(model, res.adv, y) < robust(model, x, y) - 0.2  # it does attack
    assert float((res.adv.double() - x.double()).flatten(1).abs().sum(1).max()) <= eps
    assert res.adv.min() >= 0 and res.adv.max() <= 1


def test_checkpoint_schedule_is_the_published_one():
    # the reference's counters: first check after 22 % of the steps, then the gap
    # shrinks by 3 % of the steps down to 6 %
    def reference(n):
        k, k_min, decr, counter, out = max(int(0.22 * n), 1), max(int(0.06 * n), 1), max(int(0.03 * n), 1), 0, []
        for i in range(n):
            counter += 1
            if counter == k:
                out.append(i)
                counter = 0
                k = max(k - decr, k_min)
        return out

    for n in (1, 2, 5, 10, 37, 100, 1000):
        assert _checkpoints(n) == reference(n), n


def test_dlr_losses():
    logits = torch.tensor([[3.0, 1.0, 0.5, 0.0], [0.2, 2.0, 1.0, -1.0]])
    labels = torch.tensor([0, 0])
    # sample 0: correct, z_y - max_other = 2, denominator z1 - z3 = 3 - 0.5
    # sample 1: wrong, z_y - max_other = 0.2 - 2, denominator 2 - 0.2
    want = torch.tensor([-2.0 / 2.5, 1.8 / 1.8])
    torch.testing.assert_close(dlr_loss(logits, labels), want)
    targets = torch.tensor([1, 2])
    want_t = torch.tensor([-(3.0 - 1.0) / (3.0 - 0.25), -(0.2 - 1.0) / (2.0 - (0.2 - 1.0) / 2)])
    torch.testing.assert_close(targeted_dlr_loss(logits, labels, targets), want_t)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_inside_budget_and_box_with_per_sample_eps(norm, dtype):
    model = small_cnn(dtype=dtype)
    x = images(6, dtype=dtype)
    y = predicted(model, x)
    eps = torch.tensor([0.02, 0.05, 0.1, 0.2, 0.3, 0.5], dtype=torch.float64) * (10 if norm == "l1" else 1)
    for atk in (APGD(model, eps, norm, steps=8, seed=0), APGDT(model, eps, norm, steps=8, n_targets=3, seed=0)):
        res = atk.run(x, y)
        d = (res.adv.double() - x.double()).flatten(1)
        size = {"linf": d.abs().amax(1), "l2": d.norm(dim=1), "l1": d.abs().sum(1)}[norm]
        assert bool((size <= eps).all())
        assert res.adv.min() >= 0 and res.adv.max() <= 1 and res.adv.dtype == dtype
        assert res.success.shape == (6,) and not res.nonfinite.any()


def test_first_success_and_flags():
    model = small_cnn()
    x = images(8)
    y = predicted(model, x)
    res = APGD(model, 0.3, steps=10, seed=0, restarts=2).run(x, y)
    assert torch.equal(res.success, res.first_success >= 0)
    assert int(res.first_success.max()) <= 20


def test_bad_input():
    model = small_cnn(classes=3)
    x = images(4)
    y = torch.zeros(4, dtype=torch.long)
    APGD(model, 0.1, steps=2, loss="dlr")(x, y)  # 3 classes are enough for DLR
    with pytest.raises(ValueError, match="needs at least 4 classes"):
        APGDT(model, 0.1, steps=2)(x, y)
    with pytest.raises(ValueError, match="loss='dlr' needs at least 3 classes"):
        APGD(small_cnn(classes=2), 0.1, steps=2, loss="dlr")(x, y)
    with pytest.raises(ValueError, match="loss must be one of"):
        APGD(model, 0.1, loss="cw")
    with pytest.raises(ValueError, match="rho"):
        APGD(model, 0.1, rho=1.5)
    with pytest.raises(ValueError, match="norm must be one of"):
        APGD(model, 0.1, norm="l0")
    with pytest.raises(ValueError, match="labels must lie"):
        APGD(model, 0.1, steps=2)(x, torch.full((4,), 3))


HAVE_CUDA = torch.cuda.is_available() and advx.build_info()["cuda"]


@pytest.mark.skipif(not HAVE_CUDA, reason="needs a GPU and advx built with CUDA")
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("cls", [APGD, APGDT])
def test_a_run_does_not_sync(cls, norm, monkeypatch):
    model = small_cnn("cuda")
    x = images(8, device="cuda")
    y = predicted(model, x)
    atk = cls(model, 0.1, norm, steps=12, seed=0)
    forbid_syncs(monkeypatch, cls, "_single_run")  # any host sync inside a run raises
    adv = atk(x, y)
    assert float((adv - x).abs().max()) <= 0.1 + 1e-6 or norm == "l2"


@pytest.fixture(scope="module")
def bn_digits():
    """A second model the suite trains in seconds: BatchNorm, fed channels_last images."""
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Flatten(), nn.Linear(32 * 16, 10))
    split = load_digits()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = split.train_images.contiguous(memory_format=torch.channels_last), split.train_labels
    for _ in range(6):
        for idx in torch.randperm(x.shape[0]).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    xt = split.test_images[:200].contiguous(memory_format=torch.channels_last)
    return model, xt, split.test_labels[:200]


def test_apgd_on_a_batchnorm_channels_last_model(bn_digits):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = bn_digits
    assert robust(model, x, y) > 0.9  # trained
    buffers = [b.clone() for b in model.buffers()]
    for ours, theirs in ((APGD(model, 0.1, steps=100, seed=0),
                          torchattacks.APGD(model, norm="Linf", eps=0.1, steps=100, n_restarts=1, seed=0, loss="ce")),
                         (APGDT(model, 0.1, steps=100, n_targets=4, seed=0),
                          torchattacks.APGDT(model, norm="Linf", eps=0.1, steps=100, n_restarts=1, seed=0,
                                             n_classes=10))):
        a = ours(x, y)
        theirs.n_target_classes = 4
        b = theirs(x, y)
        assert robust(model, a, y) <= robust(model, b, y) + 0.01
        assert float((a - x).abs().max()) <= 0.1
    assert all(torch.equal(p, q) for p, q in zip(buffers, model.buffers()))  # BatchNorm statistics untouched
