"""benchmarks/bench_attacks.py keeps working: its models, and every implementation it
times produces an adversarial batch inside the budget (no timing asserted)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_attacks  # noqa: E402


def test_resnet18_is_resnet18():
    model = bench_attacks.resnet18_cifar()
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # the CIFAR ResNet-18
    assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_implementation_attacks_within_budget(device, norm):
    torch.manual_seed(0)
    model = bench_attacks.digits_cnn().to(device).eval()
    x = torch.rand(6, 1, 8, 8, device=device)
    y = model(x).argmax(dim=1).detach()
    impls = bench_attacks.implementations(model, x, y, norm, device)
    expected = {"advx.attacks.PGD", "advx.ops loop", "eager PyTorch loop"}
    if device == "cuda":
        expected |= {"advx.ops loop, CUDA graph", "advx.attacks.PGD, bf16 autocast"}
    assert expected <= set(impls)
    eps = bench_attacks.BUDGETS[norm][0]
    for name, fn in impls.items():
        adv = fn()
        delta = (adv - x).flatten(1)
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert float(size.max()) <= eps * (1 + 1e-5), name
        assert float(size.min()) > 0, name
        assert 0 <= float(adv.min()) and float(adv.max()) <= 1, name
