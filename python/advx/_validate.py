"""The package's argument rules, in one place: budgets, norm names, box bounds, step
counts, seeds, learning rates and the list/scalar arguments of the fused ops.

Every layer checks the Python values it is handed with these, once, where they enter:
attacks and constraints in their constructors, the ops (advx.ops) for their Python
arguments. What a tensor holds is checked by the kernels (csrc/), which name the
argument as well: shapes, dtypes and devices on every call, budget values on the CPU.
Only ``budget`` reads a tensor's values (one device-to-host copy on a GPU), and it is
meant for constructors, never for a step.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import torch

__all__ = ["NORMS", "norm", "bounds", "positive", "budget", "budget_tensor", "math_dtype", "into_math_dtype", "bounds_in",
           "has_values", "tensor",
           "batched", "same_shape", "tensor_list", "scalar_tensor", "learning_rate", "steps", "seed"]

NORMS = ("linf", "l2")
L1_NORMS = NORMS + ("l1",)  # where an L1 ball is supported (project_onto_, PGD)


def norm(value, allowed: tuple = NORMS) -> str:
    """One of ``allowed`` (NORMS by default)."""
    if value not in allowed:
        raise ValueError(f"norm must be one of {allowed}, got {value!r}")
    return value


def bounds(value) -> tuple[float, float]:
    """(lo, hi) box bounds with lo <= hi; None means unbounded."""
    if value is None:
        return -math.inf, math.inf
    try:
        lo, hi = value
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise TypeError(f"bounds must be a pair (lo, hi) of floats or None, got {value!r}") from None
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"bounds must satisfy lo <= hi, got {value!r}")
    return lo, hi


def bounds_in(lo: float, hi: float, dtype: torch.dtype) -> tuple[float, float]:
    """(lo, hi) rounded inward to values of ``dtype``: a clamp to them stays inside [lo, hi]
    in that dtype (bfloat16(0.6) is 0.6016, above 0.6). Infinite bounds stay."""
    out = []
    for value, up in ((lo, True), (hi, False)):
        r = torch.tensor(value, dtype=torch.float64).to(dtype)
        if math.isfinite(value) and ((r.double() < value) if up else (r.double() > value)):
            r = torch.nextafter(r, torch.tensor(math.inf if up else -math.inf, dtype=dtype))  # CPU: every dtype
        out.append(float(r))
    return out[0], out[1]


def positive(value, name: str) -> float:
    """A positive finite Python number, as a float."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return float(value)


def _real_tensor(value: torch.Tensor, name: str) -> None:
    if value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must be a real tensor, got dtype {value.dtype}")


def budget(value, name: str, *, allow_none: bool = False):
    """A budget as a constructor takes it: a positive finite float, or a 0-dim or [B]
    tensor of them (one per sample; B is checked against the data later). Returns the
    float, or the tensor detached. Reads a tensor's values: call it once, not per step."""
    if value is None and allow_none:
        return None
    if not isinstance(value, torch.Tensor):
        return positive(value, name)
    if value.dim() > 1:
        raise ValueError(f"{name} must be a float, a 0-dim or a [B] tensor (one value per sample), "
                         f"got shape {tuple(value.shape)}")
    _real_tensor(value, name)
    if value.numel() == 0:
        raise ValueError(f"{name} must be positive and finite, got an empty tensor")
    if has_values(value) and not bool(((value > 0) & torch.isfinite(value)).all()):
        raise ValueError(f"{name} must be positive and finite, got {value.flatten()[:4].tolist()}")
    return value.detach()


def has_values(t: torch.Tensor) -> bool:
    """False for meta and fake tensors (torch.compile's tracing), whose values cannot be read."""
    return t.device.type != "meta" and not isinstance(t, torch._subclasses.FakeTensor)


def into_math_dtype(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Positive budget values in ``dtype``, rounded toward zero, never up: a ball made with
    the rounded radius lies inside the one asked for (float32(8/255) > 8/255 otherwise),
    and a finite radius too large for ``dtype`` (1e39 in float32) becomes its largest
    finite value instead of inf. No value is read (no host sync)."""
    if not value.is_floating_point():
        value = value.to(torch.float64)
    rounded = value.to(dtype)
    if value.dtype == dtype or torch.finfo(value.dtype).bits <= torch.finfo(dtype).bits:
        return rounded.clamp(max=torch.finfo(dtype).max)
    up = rounded.to(value.dtype) > value
    return torch.where(up, torch.nextafter(rounded, torch.zeros_like(rounded)), rounded)


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute (and read budgets) in for data of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def batched(x, name: str) -> int:
    """The batch size of a tensor whose first dimension is the batch."""
    if tensor(x, name).dim() < 1:
        raise ValueError(f"{name} must have a batch dimension first, got a 0-dim tensor")
    return x.shape[0]


def same_shape(ref: torch.Tensor, ref_name: str, t, name: str) -> None:
    if tensor(t, name).shape != ref.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)} but {ref_name} has shape {tuple(ref.shape)}")


def budget_tensor(value, name: str, x: torch.Tensor) -> torch.Tensor:
    """A budget (float, 0-dim or [B] tensor) as the kernels read it: a [B] tensor in x's
    math dtype. A float is checked here; a tensor's values are not read (the CPU kernels
    check them; on a GPU that read would be a sync per call), and a [B] tensor stays on
    its device, which the kernels check against x's."""
    batch = x.shape[0]
    dtype = math_dtype(x.dtype)
    if not isinstance(value, torch.Tensor):
        exact = torch.full((batch,), positive(value, name), dtype=torch.float64, device=x.device)
        return into_math_dtype(exact, dtype)
    _real_tensor(value, name)
    if value.dim() == 0:
        return into_math_dtype(value.to(device=x.device), dtype).expand(batch)
    if value.dim() != 1 or value.shape[0] != batch:
        raise ValueError(f"{name} must be a float or a tensor of shape [{batch}] (one per sample), "
                         f"got shape {tuple(value.shape)}")
    return into_math_dtype(value, dtype)


def tensor_list(value, name: str) -> list:
    """A list or tuple (of tensors, which the kernels check), as a list."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of tensors, got {type(value).__name__}")
    return list(value)


def scalar_tensor(value, name: str) -> torch.Tensor:
    """A one-element floating point tensor (a learning rate, GradScaler's scale/found_inf)."""
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or not value.is_floating_point():
        described = f"shape {tuple(value.shape)}, dtype {value.dtype}" if isinstance(value, torch.Tensor) \
            else type(value).__name__
        raise TypeError(f"{name} must be a one-element floating point tensor, got {described}")
    return value


def learning_rate(value):
    """A non-negative finite float, or a one-element tensor (read on the device)."""
    if isinstance(value, torch.Tensor):
        return scalar_tensor(value, "lr")
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"lr must be a non-negative float or a one-element tensor, got {value!r}")
    return float(value)


def steps(value) -> int:
    """A number of iterations: an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"steps must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"steps must be >= 1, got {value}")
    return int(value)


def seed(value):
    """An int seed, or None (the global RNG)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, Integral)):
        raise TypeError(f"seed must be an int or None, got {type(value).__name__}")
    return value
