"""How the attacks, the evaluation and the visualizations run a model: in eval mode with
the caller's train/eval flags restored, with seeded generators, on the model's device."""
from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch

__all__ = ["eval_mode", "generator", "default_device", "logits_of", "count_passes", "json_ready"]


@contextlib.contextmanager
def eval_mode(model):
    """Run ``model`` in eval mode (deterministic dropout, frozen batch-norm
    statistics), then restore every submodule's own flag, mixed states included."""
    modules = list(model.modules()) if isinstance(model, torch.nn.Module) else []
    flags = [m.training for m in modules]
    try:
        for m in modules:
            m.training = False
        yield
    finally:
        for m, flag in zip(modules, flags):
            m.training = flag


def generator(seed, device) -> torch.Generator | None:
    """A generator on ``device`` seeded with ``seed``; None (the global RNG, as
    torch.manual_seed left it) when ``seed`` is None."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


def default_device(model) -> torch.device:
    """The device of the model's first parameter; the CPU for a model without any."""
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


class PassCount:
    """Sample-passes (one sample through the model once) by kind: ``forward_backward``
    (the input needs a gradient) and ``forward``."""

    def __init__(self):
        self.forward_backward = 0
        self.forward = 0


_counters: list = []


@contextlib.contextmanager
def count_passes():
    """Count the sample-passes of every logits_of call inside the block."""
    count = PassCount()
    _counters.append(count)
    try:
        yield count
    finally:
        _counters.remove(count)


def logits_of(model, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` as a logits tensor [B, classes]: the output itself, the first element
    of a tuple or list, or the ``logits`` of a mapping or an output object (HuggingFace
    style). Anything else is a TypeError that names ``model`` and what it returned."""
    out = model(x)
    if _counters:
        kind = "forward_backward" if x.requires_grad and torch.is_grad_enabled() else "forward"
        for count in _counters:
            setattr(count, kind, getattr(count, kind) + int(x.shape[0]))
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    elif isinstance(out, Mapping):  # HuggingFace's ModelOutput is one too
        out = out.get("logits")
    elif not isinstance(out, torch.Tensor) and hasattr(out, "logits"):
        out = out.logits
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        what = type(out).__name__ if not isinstance(out, torch.Tensor) else f"a tensor of shape {tuple(out.shape)}"
        raise TypeError(f"model must return logits of shape [{x.shape[0]}, classes] (a tensor, a tuple whose "
                        f"first element is the logits, or an output with `logits`); it returned {what}")
    return out


def json_ready(value, key=None):
    """``value`` for a JSON report: floats at 7 significant digits (float32 holds no
    more, and 0.05000000074505806 tells the reader nothing), values under an ``eps`` key
    as the user gave them."""
    if isinstance(value, dict):
        return {k: json_ready(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v, key) for v in value]
    if isinstance(value, float) and key != "eps" and value == value and abs(value) != float("inf"):
        return float(f"{value:.7g}")
    return value
