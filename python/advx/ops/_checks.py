"""Argument checks shared by the ops: clear exceptions that name the argument."""
from __future__ import annotations

import math
from numbers import Real

import torch

NORMS = ("linf", "l2")


def _capturing() -> bool:
    return torch.compiler.is_compiling() or (
        torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    )


def check_tensor(t, name: str, *, floating: bool = True) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got dtype {t.dtype}")


def check_like(ref: torch.Tensor, ref_name: str, t, name: str) -> None:
    """`t` must match `ref` in device, dtype and shape."""
    check_tensor(t, name)
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}")
    if t.shape != ref.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)} but {ref_name} has shape {tuple(ref.shape)}")


def check_norm(norm) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def check_batched(x: torch.Tensor, name: str) -> int:
    if x.dim() < 1:
        raise ValueError(f"{name} must have a batch dimension first, got a 0-dim tensor")
    return x.shape[0]


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def budget(value, name: str, x: torch.Tensor) -> torch.Tensor:
    """A positive per-sample budget (float, 0-dim or [B] tensor) as the [B] tensor
    in the math dtype on x's device that the kernels read."""
    batch = x.shape[0]
    dtype = math_dtype(x.dtype)
    if isinstance(value, torch.Tensor):
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != batch):
            raise ValueError(
                f"{name} must be a float or a tensor of shape [{batch}] (one per sample), "
                f"got shape {tuple(value.shape)}"
            )
        if value.device != x.device and value.dim() > 0:
            raise ValueError(f"{name} is on {value.device} but the data is on {x.device}")
        if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be a real tensor, got dtype {value.dtype}")
        if not _capturing() and value.numel() > 0:
            bad = ~(value > 0) | ~torch.isfinite(value)
            if bool(bad.any()):
                raise ValueError(f"{name} must be positive and finite, got {value.flatten()[bad.flatten()][:4].tolist()}...")
        return value.to(device=x.device, dtype=dtype).expand(batch).contiguous()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return torch.full((batch,), float(value), dtype=dtype, device=x.device)


def bounds_pair(bounds) -> tuple[float, float]:
    """(lo, hi) box bounds; None means unbounded."""
    if bounds is None:
        return -math.inf, math.inf
    try:
        lo, hi = bounds
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise TypeError(f"bounds must be a pair (lo, hi) of floats or None, got {bounds!r}") from None
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"bounds must satisfy lo <= hi, got {bounds!r}")
    return lo, hi
