"""How the attacks, the evaluation and the visualizations run a model: in eval mode with
the caller's train/eval flags restored, with seeded generators, on the model's device."""
from __future__ import annotations

import contextlib

import torch

__all__ = ["eval_mode", "generator", "default_device"]


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
