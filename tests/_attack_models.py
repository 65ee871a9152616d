"""Small seeded models and data for the attack / eval / nn tests (random weights)."""
import torch
from torch import nn


def small_cnn(device="cpu", channels=1, classes=10, dtype=torch.float32, seed=1234):
    """Works for any image size: the conv features are pooled to 2x2."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, classes),
    )
    with torch.no_grad():  # larger weights, no biases: logits that depend on the input
        for layer in model:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(layer.weight, std=2.0 / layer.weight[0].numel() ** 0.5)
                layer.bias.zero_()
    torch.random.set_rng_state(gen_state)
    return model.to(device=device, dtype=dtype).eval()


def bn_dropout_cnn(device="cpu", seed=7):
    """Batch norm and dropout: what train/eval mode changes."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.3),
        nn.Flatten(), nn.Linear(8 * 64, 10),
    ).to(device)


def images(batch, shape=(1, 8, 8), device="cpu", dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((batch, *shape), generator=gen, dtype=dtype).to(device)


def predicted(model, x):
    with torch.no_grad():
        return model(x).argmax(dim=1)


def forbid_syncs(monkeypatch, cls, method: str):
    """Wrap ``cls.method`` so that any device-to-host sync inside it raises (CUDA only)."""
    inner = getattr(cls, method)

    def without_syncs(self, *args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return inner(self, *args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(cls, method, without_syncs)


class RowLinear(nn.Linear):
    """nn.Linear as a product and a sum per row: unlike a BLAS matmul, whose rounding can
    change with the number of rows, each output row is the same bits in any batch."""

    def forward(self, x):
        return (x[:, None, :] * self.weight[None]).sum(-1) + self.bias


def row_mlp_digits(n: int = 200):
    """(model, x, y): a float64 MLP trained on the first ``n`` digits, whose per-sample
    outputs and input gradients do not depend on the batch."""
    from advx.data import load_digits

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), RowLinear(64, 32), nn.ReLU(), RowLinear(32, 10)).double().eval()
    split = load_digits()
    x, y = split.test_images[:n].double(), split.test_labels[:n]
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y
