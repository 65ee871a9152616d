"""docs/pipelines.md runs as written (each python block, on the digits data) and does what
it says; the torchattacks-style conveniences: every setting in an attack's repr, random and
least-likely targets, set_normalization_used."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import advx
from advx import attacks
from advx.attacks import (APGD, APGDT, FGSM, PGD, Attack, BoxConstrained, GradientAscent, Square,
                          least_likely_targets, random_targets)

DOC = Path(__file__).resolve().parents[1] / "docs" / "pipelines.md"


# -- the examples of docs/pipelines.md ------------------------------------------------


def doc_blocks() -> dict[str, list[str]]:
    """The python blocks of the doc under each heading (## or ###), in order."""
    blocks: dict[str, list[str]] = {}
    heading = None
    for part in re.split(r"(^#{2,3} [^\n]*$|^```python\n.*?^```$)", DOC.read_text(), flags=re.M | re.S):
        if re.match(r"#{2,3} ", part):
            heading = part.lstrip("#").strip()
        elif part.startswith("```python"):
            blocks.setdefault(heading, []).append(part[len("```python\n"):-3])
    return blocks


EXAMPLES = {
    "training": "Adversarial training (PGD, Madry et al.)",
    "saved": "A saved adversarial dataset",
    "collate": "Adversarial batches on the fly",
    "normalize": "A model that normalizes its input",
    "targeted": "Targeted attacks: random and least-likely targets",
}


def test_doc_has_the_examples():
    blocks = doc_blocks()
    assert set(blocks) == set(EXAMPLES.values())
    assert all(len(b) == 1 for b in blocks.values())


@pytest.fixture
def run_example(tmp_path, monkeypatch, digits_cache_dir):
    """exec one example in a fresh namespace, in a scratch directory, with the session's
    digits-CNN cache; one thread (8x8 batches: more threads only contend on 2 cores)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADVX_CACHE_DIR", str(digits_cache_dir))
    threads = torch.get_num_threads()

    def run(key):
        (code,) = doc_blocks()[EXAMPLES[key]]
        ns = {"__name__": f"pipelines_{key}"}
        torch.set_num_threads(1)
        try:
            exec(compile(code, f"{DOC}:{key}", "exec"), ns)
        finally:
            torch.set_num_threads(threads)
        return ns

    return run


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def within(adv, x, eps, bounds=(0.0, 1.0)) -> bool:
    """Inside the L-inf ball and the box, exactly (float64 comparison, no tolerance)."""
    d = (adv.double() - x.double()).abs().max().item()
    return d <= eps and adv.min().item() >= bounds[0] and adv.max().item() <= bounds[1]


def test_doc_adversarial_training(run_example, capsys):
    ns = run_example("training")
    for name in ("standard", "robust"):
        model = ns[name]
        assert not model.training  # fit hands the model back in eval mode
        # the attack's passes ran in eval mode: batch norm counted the training updates only
        assert int(model[1].num_batches_tracked) == 3 * len(ns["train"])
    out = capsys.readouterr().out
    acc = {name: (float(clean), float(robust)) for name, clean, robust in
           re.findall(r"^(standard|adversarial) +clean ([\d.]+) +PGD-20 at eps 0.1: ([\d.]+)$", out, re.M)}
    assert set(acc) == {"standard", "adversarial"}, out
    assert acc["standard"][0] > 0.85 and acc["adversarial"][0] > 0.85
    # the doc's claim: PGD training buys robust accuracy at the training budget (0.53 -> 0.69)
    assert acc["adversarial"][1] > acc["standard"][1] + 0.08, acc
    x, y = ns["digits"].test_images, ns["digits"].test_labels
    assert ns["accuracy"](ns["robust"]) == pytest.approx(accuracy(ns["robust"], x, y))


def test_doc_saved_adversarial_dataset(run_example):
    ns = run_example("saved")
    digits, model, atk = ns["digits"], ns["model"], ns["atk"]
    x, y = digits.test_images, digits.test_labels
    saved = torch.load("digits_pgd.pt")
    assert saved["images"].dtype == torch.float32 and saved["images"].shape == x.shape
    assert torch.equal(saved["labels"], y)
    assert within(saved["images"], x, 0.1)  # float tensors keep the budget exactly
    assert "seed=0" in saved["attack"] and "eps=0.1" in saved["attack"]
    robust = accuracy(model, saved["images"], y)
    assert robust < accuracy(model, x, y) - 0.2
    assert ns["correct"] / len(ns["adv_set"]) == pytest.approx(robust)
    # the same file for another batch size and order: (seed, index) per sample
    order = torch.randperm(len(y))
    again = torch.empty_like(x)
    for rows in order.split(50):
        again[rows] = atk(x[rows], y[rows], indices=rows)
    assert torch.equal(again, saved["images"])


def test_doc_adversarial_collate(run_example):
    ns = run_example("collate")
    digits, model = ns["digits"], ns["model"]
    x, y = digits.test_images, digits.test_labels
    assert ns["total"] == len(y)
    assert ns["correct"] / ns["total"] < accuracy(model, x, y) - 0.2
    x_adv, y_first = next(iter(ns["loader"]))
    assert torch.equal(y_first, y[:64])
    assert within(x_adv, x[:64], 0.1) and not torch.equal(x_adv, x[:64])


def test_doc_normalize(run_example, capsys):
    ns = run_example("normalize")  # the block asserts set_normalization_used == Normalize itself
    assert "refused: images must lie in bounds" in capsys.readouterr().out
    x, y, x_adv, model = ns["x"], ns["y"], ns["x_adv"], ns["model"]
    assert isinstance(model, advx.Normalize) and isinstance(ns["same"].model, advx.Normalize)
    assert within(x_adv, x, 0.1)
    assert ns["clean"] > 0.85 and ns["robust"] < ns["clean"] - 0.2
    # the budget is in pixels: on the network's input it is eps / std
    mean, std = ns["mean"], ns["std"]
    step = ((x_adv - mean) / std - (x - mean) / std).abs().max().item()
    assert step == pytest.approx(0.1 / std, rel=1e-5) and std < 0.5
    with torch.no_grad():
        torch.testing.assert_close(model(x_adv), ns["net"]((x_adv - mean) / std))


def test_doc_targeted(run_example):
    ns = run_example("targeted")
    y, targets, hardest = ns["y"], ns["targets"], ns["hardest"]
    assert not bool((targets == y).any()) and not bool((hardest == y).any())
    assert torch.equal(targets, random_targets(y, 10, seed=0))
    rate_random, rate_least = ns["hit_random"].float().mean().item(), ns["hit_least"].float().mean().item()
    assert rate_random > 0.3
    assert rate_least < rate_random  # the least likely class is the hardest target


# -- repr: every setting ---------------------------------------------------------------


def small_model(channels=1, classes=10):
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, classes)).eval()


# non-default values of every constructor setting
SETTINGS = {
    PGD: dict(eps=0.07, alpha=0.013, steps=7, norm="l2", random_start=False, targeted=True, optimizer="adam",
              lr=0.02, early_stop=True, bounds=(0.0, 2.0), seed=5, l1_sparsity=0.1),
    FGSM: dict(eps=0.07, norm="l2", targeted=True, bounds=(-1.0, 1.0)),
    APGD: dict(eps=0.07, norm="l2", steps=7, loss="dlr", restarts=2, rho=0.6, seed=5, bounds=(0.0, 2.0),
               targeted=False),
    APGDT: dict(eps=0.07, norm="l1", steps=7, n_targets=3, restarts=2, rho=0.6, seed=5, bounds=(0.0, 2.0)),
    Square: dict(eps=0.07, norm="l2", queries=77, p_init=0.3, seed=5, bounds=(0.0, 2.0)),
    GradientAscent: dict(lr=0.3, steps=7, early_stop=False, targeted=True, bounds=None),
    BoxConstrained: dict(c=0.5, steps=7, optimizer="sgd", lr=0.02, targeted=False, early_stop=True,
                         bounds=(0.0, 2.0)),
}


def test_repr_covers_every_attack():
    exported = {getattr(attacks, n) for n in attacks.__all__}
    classes = {c for c in exported if isinstance(c, type) and issubclass(c, Attack) and c is not Attack}
    assert classes == set(SETTINGS)


@pytest.mark.parametrize("cls", list(SETTINGS), ids=lambda c: c.__name__)
def test_repr_shows_every_setting(cls):
    kwargs = SETTINGS[cls]
    params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "model")]
    kwargs = {k: v for k, v in kwargs.items() if k in params}  # (FGSM's norm is new in pgd.py)
    assert set(params) == set(kwargs)  # the table above names every constructor setting
    text = repr(cls(small_model(), **kwargs))
    assert text.startswith(f"{cls.__name__}(model=Sequential, ")
    for name, value in kwargs.items():
        assert f"{name}={value!r}" in text, (name, text)
    # the defaults show too
    sig = inspect.signature(cls.__init__).parameters
    required = {n: kwargs[n] for n in params if sig[n].default is inspect.Parameter.empty}
    text = repr(cls(small_model(), **required))
    for name in params:
        assert f", {name}=" in text, (name, text)


def test_repr_of_tensor_budgets_and_normalized_models():
    model = small_model()
    assert "eps=tensor([0.1, 0.25])," in repr(PGD(model, torch.tensor([0.1, 0.25])))
    many = torch.rand(100, generator=torch.Generator().manual_seed(1)) * 0.2 + 0.05
    text = repr(PGD(model, many))
    assert f"min={many.min().item():.6g}" in text and f"max={many.max().item():.6g}" in text
    assert "tensor(shape=[100]" in text
    text = repr(FGSM(model, 0.1).set_normalization_used([0.3], [0.2]))
    assert text.startswith("FGSM(model=Normalize(Sequential, mean=[0.3], std=[0.2]), eps=0.1")
    assert "mean=[0.485, 0.456, 0.406]" in repr(advx.Normalize(model, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))


# -- targets ---------------------------------------------------------------------------


def test_random_targets_are_uniform_over_the_other_classes():
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 7, (3000,), generator=gen)
    targets = random_targets(labels, 7, generator=gen)
    assert targets.dtype == torch.int64 and targets.shape == labels.shape
    assert not bool((targets == labels).any())
    assert int(targets.min()) >= 0 and int(targets.max()) < 7
    same_label = random_targets(torch.full((6000,), 3), 7)
    counts = torch.bincount(same_label, minlength=7)
    assert counts[3] == 0
    others = counts[torch.arange(7) != 3].float()
    assert bool(((others > 850) & (others < 1150)).all()), counts  # 1000 each expected, sd ~29
    # a generator reproduces, the global RNG moves on
    assert torch.equal(random_targets(labels, 7, generator=torch.Generator().manual_seed(9)),
                       random_targets(labels, 7, generator=torch.Generator().manual_seed(9)))
    assert not torch.equal(random_targets(labels, 7), random_targets(labels, 7))


def test_random_targets_seeded_per_sample():
    labels = torch.randint(0, 10, (200,))
    whole = random_targets(labels, 10, seed=4)
    assert not bool((whole == labels).any())
    assert torch.equal(whole, random_targets(labels, 10, seed=4))
    assert not torch.equal(whole, random_targets(labels, 10, seed=5))
    order = torch.randperm(200)
    parts = torch.empty_like(whole)
    for rows in order.split(33):  # any batch, any order: the same target per sample
        parts[rows] = random_targets(labels[rows], 10, seed=4, indices=rows)
    assert torch.equal(parts, whole)


def test_random_targets_errors():
    labels = torch.tensor([0, 3, 9])
    with pytest.raises(ValueError, match="labels must lie in"):
        random_targets(labels, 5)
    with pytest.raises(ValueError, match="num_classes"):
        random_targets(torch.zeros(3, dtype=torch.long), 1)
    with pytest.raises(TypeError, match="labels"):
        random_targets(labels.float(), 10)
    with pytest.raises(ValueError, match="either seed"):
        random_targets(labels, 10, seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="indices"):
        random_targets(labels, 10, indices=torch.arange(3))
    assert random_targets(labels[:0], 10).shape == (0,)


def test_least_likely_targets():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Dropout(0.5), nn.Linear(32, 10))
    x = torch.rand(300, 1, 8, 8)
    model.train()
    with torch.no_grad():
        logits = model.eval()(x)
    model.train()
    targets = least_likely_targets(model, x)
    assert model.training and model[2].training  # its mode back
    assert torch.equal(targets, logits.argmin(1))  # eval mode: dropout off
    assert all(p.grad is None for p in model.parameters())
    # with labels, never the label: a label that is the argmin gives the next least likely
    labels = logits.argmin(1)
    avoid = least_likely_targets(model, x, labels)
    assert not bool((avoid == labels).any())
    assert torch.equal(avoid, logits.topk(2, dim=1, largest=False).indices[:, 1])
    other = torch.randint(0, 10, (300,))
    keep = other != logits.argmin(1)
    assert torch.equal(least_likely_targets(model, x, other)[keep], logits.argmin(1)[keep])
    with pytest.raises(ValueError, match="labels must lie in"):
        least_likely_targets(model, x, torch.full((300,), 10))
    with pytest.raises(ValueError, match="shape"):
        least_likely_targets(model, x, other[:5])


def test_targeted_attack_with_helper_targets_reaches_them():
    model = small_model()
    x = torch.rand(64, 1, 8, 8)
    targets = least_likely_targets(model, x)
    res = PGD(model, eps=0.5, steps=30, targeted=True, seed=0).run(x, targets)
    assert res.success.float().mean() > 0.8
    assert torch.equal(res.success, model(res.adv).argmax(1) == targets)


# -- set_normalization_used ------------------------------------------------------------


MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def normalized_pair(make, net, mean=MEAN, std=STD):
    return make(advx.Normalize(net, mean, std)), make(net).set_normalization_used(mean, std)


@pytest.mark.parametrize("make", [
    lambda m: PGD(m, 0.05, steps=5, seed=0),
    lambda m: PGD(m, 0.5, steps=5, norm="l2", seed=0),
    lambda m: FGSM(m, 0.05),
    lambda m: APGD(m, 0.05, steps=8, seed=0),
    lambda m: Square(m, 0.05, queries=20, seed=0),
], ids=["pgd", "pgd-l2", "fgsm", "apgd", "square"])
def test_set_normalization_used_equals_explicit_normalize(make):
    net = small_model(channels=3)
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 10, (16,))
    explicit, wrapped = normalized_pair(make, net)
    assert isinstance(wrapped.model, advx.Normalize) and wrapped.model.model is net
    a, b = explicit.run(x, y), wrapped.run(x, y)
    for field in ("adv", "success", "loss", "norm", "first_success"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert torch.equal(explicit(x, y), wrapped(x, y))
    # not a no-op: the raw network gives another answer
    assert not torch.equal(make(net)(x, y), a.adv)


def test_set_normalization_used_replaces_and_returns_self():
    net = small_model(channels=3)
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 10, (16,))
    atk = PGD(net, 0.05, steps=5, seed=0)
    assert atk.set_normalization_used(MEAN, STD) is atk
    atk.set_normalization_used([0.1, 0.2, 0.3], [0.5, 0.5, 0.5])  # replaces, never stacks
    assert atk.model.model is net
    explicit = PGD(advx.Normalize(net, [0.1, 0.2, 0.3], [0.5, 0.5, 0.5]), 0.05, steps=5, seed=0)
    assert torch.equal(atk(x, y), explicit(x, y))
    # with_eps keeps the normalization
    assert isinstance(atk.with_eps(0.1).model, advx.Normalize)
    with pytest.raises(ValueError, match="std must be positive"):
        PGD(net, 0.05).set_normalization_used(MEAN, [0.2, 0.0, 0.3])


def test_set_normalization_used_on_the_models_device(device):
    net = small_model(channels=3).to(device)
    x, y = torch.rand(8, 3, 8, 8, device=device), torch.randint(0, 10, (8,), device=device)
    atk = PGD(net, 0.05, steps=3, seed=0).set_normalization_used(MEAN, STD)
    assert atk.model.mean.device == x.device
    adv = atk(x, y)
    assert adv.device == x.device and within(adv, x, 0.05)
    # Normalize left on the CPU still takes inputs on the model's device
    loose = advx.Normalize(net, MEAN, STD)
    mean = torch.tensor(MEAN, device=device).reshape(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).reshape(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(loose(x), net((x - mean) / std))
