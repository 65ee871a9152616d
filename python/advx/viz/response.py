"""Maximum-response images: optimize an input from small noise to maximize a class
logit or a unit/channel of a named layer, minus an image prior (by default the
multiscale edge-energy penalty)."""
from __future__ import annotations

from numbers import Integral
from typing import Callable, NamedTuple, Sequence

import torch
from torch import nn

from .. import _validate
from .._runtime import default_device, eval_mode, generator
from ..optim import Adam
from ..prior import EdgeEnergy

__all__ = ["Visualization", "maximize_response", "render", "layer_names"]


class Visualization(NamedTuple):
    image: torch.Tensor      # the optimized input, [B, C, H, W], raw values
    rendered: torch.Tensor   # render(image): displayable, in [0, 1]
    response: torch.Tensor   # [B] the maximized response at the end (prior not subtracted)


class _Captured(Exception):
    """Raised by the hook once the layer's output is in hand: the rest of the forward is not needed."""


def render(x: torch.Tensor) -> torch.Tensor:
    """``0.5 + 0.1 * (x - mean) / std`` clamped to [0, 1], per sample for a [B, ...] batch
    (4-dim input), over the whole tensor otherwise: a contrast stretch that shows
    structure whatever the optimized values' scale."""
    x = x.detach()
    dims = tuple(range(1, x.dim())) if x.dim() == 4 else tuple(range(x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True) if x[0].numel() > 1 else torch.ones_like(mean)
    return (0.5 + 0.1 * (x - mean) / std.clamp_min(1e-12)).clamp_(0.0, 1.0)


def layer_names(model: nn.Module) -> list[str]:
    """The names ``maximize_response(layer=...)`` accepts: every named sub-module."""
    return [name for name, _ in model.named_modules() if name]


def _targets(target, batch: int) -> tuple[torch.Tensor, int]:
    if isinstance(target, torch.Tensor):
        target = target.flatten().tolist()
    if isinstance(target, Integral) and not isinstance(target, bool):
        target = [int(target)]
    if not isinstance(target, Sequence) or not target or not all(
            isinstance(t, Integral) and not isinstance(t, bool) for t in target):
        raise TypeError(f"target must be an int or a non-empty sequence of ints, got {target!r}")
    if len(target) > 1 and batch not in (1, len(target)):
        raise ValueError(f"shape[0] is {batch} but {len(target)} targets were given: "
                         "use shape[0] = 1 or one image per target")
    batch = max(batch, len(target))
    idx = torch.tensor(list(target) * (batch // len(target)), dtype=torch.int64)
    return idx, batch


def _unit_index(unit) -> tuple:
    if unit is None:
        return ()
    unit = (unit,) if isinstance(unit, Integral) else tuple(unit)
    if not all(isinstance(u, Integral) and not isinstance(u, bool) for u in unit):
        raise TypeError(f"unit must be an int or a tuple of ints, got {unit!r}")
    return unit


def maximize_response(model: nn.Module, target, *, steps: int = 250, lr: float = 0.1,
                      prior: Callable[[torch.Tensor], torch.Tensor] | None = None,
                      prior_weight: float = 1.0, shape=(1, 3, 224, 224), layer: str | None = None,
                      unit=None, device=None, seed: int = 0, progress: bool = False) -> Visualization:
    """Optimize an input with Adam to maximize ``response(x) - prior_weight * prior(x)``.

    ``response`` is the ``target`` class logit of ``model(x)`` or, with ``layer``
    (a name from ``model.named_modules()``), channel ``target`` of that layer's output,
    summed over its activation map, or the single unit at index ``unit`` (an int or a
    tuple, e.g. ``(h, w)``) of that channel. ``target`` may be a sequence: one image per
    target, optimized together. The image starts from N(0, 0.01^2) noise drawn with
    ``seed``; ``prior`` defaults to ``advx.EdgeEnergy()`` (``prior_weight=0`` turns it
    off). The model is run in eval mode and left in the mode it was given; its
    parameters get no gradients. ``progress=True`` shows a bar over the steps (tqdm).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    steps = _validate.steps(steps)
    lr = _validate.positive(lr, "lr")
    if not prior_weight >= 0:
        raise ValueError(f"prior_weight must be >= 0, got {prior_weight!r}")
    shape = tuple(shape)
    if len(shape) < 2 or not all(isinstance(s, Integral) and s > 0 for s in shape):
        raise ValueError(f"shape must be (batch, ...) of positive ints, got {shape!r}")
    targets, batch = _targets(target, shape[0])
    unit_idx = _unit_index(unit)
    device = torch.device(device) if device is not None else default_device(model)
    modules = dict(model.named_modules())
    if layer is not None and (not layer or layer not in modules):
        raise ValueError(f"layer {layer!r} is not a module of the model; valid names: {', '.join(layer_names(model))}")
    if prior_weight > 0 and prior is None:
        prior = EdgeEnergy()
    if isinstance(prior, nn.Module):
        prior = prior.to(device)

    # drawn on the CPU: the same start on every device
    x = (torch.randn((batch,) + shape[1:], generator=generator(_validate.seed(seed), "cpu")) * 0.01)
    x = x.to(device).requires_grad_()
    targets = targets.to(device)
    rows = torch.arange(batch, device=device)
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(output)
        raise _Captured

    def response(inp: torch.Tensor) -> torch.Tensor:
        captured.clear()
        try:
            act = model(inp)
        except _Captured:
            act = captured[0]
        if not isinstance(act, torch.Tensor) or act.dim() < 2:
            where = f"layer {layer!r}" if layer else "the model"
            raise ValueError(f"{where} must output a [B, C, ...] tensor to pick target {target!r} from")
        if int(targets.max()) >= act.shape[1] or int(targets.min()) < 0:
            raise ValueError(f"target {target!r} is out of range: {'layer ' + repr(layer) if layer else 'the model'} "
                             f"has {act.shape[1]} channels/classes")
        picked = act[rows, targets]
        if unit_idx:
            try:
                picked = picked[(slice(None),) + unit_idx]
            except IndexError:
                raise ValueError(f"unit {unit!r} is out of range for an activation map of shape "
                                 f"{tuple(picked.shape[1:])}") from None
        return picked.reshape(batch, -1).sum(1)

    handle = modules[layer].register_forward_hook(hook) if layer is not None else None
    optimizer = Adam([x], lr=lr)
    try:
        with eval_mode(model):
            for _ in _steps(steps, progress):
                objective = response(x).sum()
                if prior_weight > 0:
                    objective = objective - prior_weight * prior(x).sum()
                # grad w.r.t. x only: the parameters' .grad are never touched
                (x.grad,) = torch.autograd.grad(-objective, [x])
                optimizer.step()
            with torch.no_grad():
                final = response(x)
    finally:
        if handle is not None:
            handle.remove()
    image = x.detach()
    return Visualization(image, render(image), final.detach())


def _steps(steps: int, progress: bool):
    if progress:
        try:
            from tqdm.auto import trange
        except ImportError:  # tqdm is an extra: no bar then
            return range(steps)
        return trange(steps, unit="step", desc="maximize_response", leave=False)
    return range(steps)
