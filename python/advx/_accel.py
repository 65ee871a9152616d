"""Cheaper model passes for an evaluation: mixed precision (autocast), channels-last
inputs and ``torch.compile``, each optional, none of them changing the caller's model.

:func:`accelerate` wraps the model once; the attacks then call the wrapper exactly as
they would call the model (float32 inputs in, float32 logits out, input gradients
flowing). Whatever cannot be applied is skipped with a one-line note, and a compile
failure falls back to eager: acceleration never makes an evaluation fail.
"""
from __future__ import annotations

import itertools
import types
import warnings
from collections.abc import Mapping, MutableMapping

import torch
from torch import nn

from ._runtime import eval_mode

__all__ = ["accelerate"]

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_HALF = (torch.float16, torch.bfloat16)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _float32(t):
    return t.float() if isinstance(t, torch.Tensor) and t.dtype in _HALF else t


def _logits_to_float32(out):
    """``out`` with its logits (the tensor itself, a tuple's or list's first element, a
    mapping's or output object's ``logits``) cast to float32 where autocast made them
    half precision; every other part of the output is left as the model returned it."""
    if isinstance(out, torch.Tensor):
        return _float32(out)
    if isinstance(out, tuple) and out:
        first = _float32(out[0])
        if first is out[0]:
            return out
        items = (first, *out[1:])
        if type(out) is tuple:
            return items
        return out._make(items) if hasattr(out, "_make") else type(out)(items)  # a namedtuple, a subclass
    if isinstance(out, list) and out:
        first = _float32(out[0])
        return out if first is out[0] else [first, *out[1:]]
    if isinstance(out, Mapping):
        logits = out.get("logits")
        cast = _float32(logits)
        if cast is logits:
            return out
        if type(out) is dict:
            return {**out, "logits": cast}
        if isinstance(out, MutableMapping):  # HuggingFace's ModelOutput: item and attribute
            out["logits"] = cast
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor) and logits.dtype in _HALF:
        try:
            out.logits = logits.float()
        except (AttributeError, TypeError):
            pass
    return out


class _Accelerated(nn.Module):
    """Runs ``model`` with the chosen input memory format and autocast, optionally
    through a compiled forward. ``model`` is a submodule (so ``eval_mode`` and
    ``.parameters()`` reach it) and is never changed."""

    def __init__(self, model, *, memory_format=None, amp_dtype=None, device_type="cpu"):
        super().__init__()
        self.model = model
        self.memory_format = memory_format
        self.amp_dtype = amp_dtype
        self.device_type = device_type
        # The compiled forward (see accelerate), or None: eager. Set from outside only
        # once it passed its trial; reset to None if it fails later.
        self._compiled = None

    def _eager(self, x, *args, **kwargs):
        if (self.memory_format is not None and isinstance(x, torch.Tensor)
                and x.dim() == (5 if self.memory_format is torch.channels_last_3d else 4)):
            x = x.contiguous(memory_format=self.memory_format)  # differentiable; a copy at most
        if self.amp_dtype is None:
            return self.model(x, *args, **kwargs)
        with torch.autocast(device_type=self.device_type, dtype=self.amp_dtype):
            out = self.model(x, *args, **kwargs)
        return _logits_to_float32(out)

    def forward(self, x, *args, **kwargs):
        compiled = self._compiled
        if compiled is None:
            return self._eager(x, *args, **kwargs)
        try:
            return compiled(x, *args, **kwargs)
        except Exception as e:  # noqa: BLE001  (a recompilation for a new shape or mode failed)
            out = self._eager(x, *args, **kwargs)  # the model's own error, if it has one, propagates
            self._compiled = None
            warnings.warn(f"accelerate: the compiled model failed ({_first_line(e)}); running eager from now on",
                          RuntimeWarning, stacklevel=2)
            return out

    def extra_repr(self) -> str:
        parts = []
        if self.memory_format is not None:
            parts.append(f"memory_format={self.memory_format}")
        if self.amp_dtype is not None:
            parts.append(f"amp={self.amp_dtype}")
        if self._compiled is not None:
            parts.append("compiled")
        return ", ".join(parts)


_compiled_ids = itertools.count()


def _compiled_forward(self, x, *args, **kwargs):
    return self._eager(x, *args, **kwargs)


def _own_forward(wrapper):
    """``wrapper._eager`` through a function with a code object of its own. Dynamo keeps
    its compiled graphs, and counts recompilations against ``recompile_limit`` (8), per
    code object: compiling ``wrapper._eager`` itself would share one budget among every
    model accelerated in the process, and the ninth would silently run eager."""
    name = f"advx_accelerated_forward_{next(_compiled_ids)}"
    fields = {"co_name": name}
    if hasattr(_compiled_forward.__code__, "co_qualname"):
        fields["co_qualname"] = name
    code = _compiled_forward.__code__.replace(**fields)
    return types.MethodType(types.FunctionType(code, _compiled_forward.__globals__, name), wrapper)


def _amp_dtype(amp, device_type: str):
    if amp is None:
        return None
    if not isinstance(amp, str) or amp not in _AMP_DTYPES:
        raise ValueError(f"amp must be None, 'bf16' or 'fp16'; got {amp!r}")
    dtype = _AMP_DTYPES[amp]
    if not torch.amp.is_autocast_available(device_type):
        raise ValueError(f"amp={amp!r}: torch has no autocast for device type {device_type!r}")
    try:  # an older torch warns and disables float16 CPU autocast: an error here, not a silent no-op
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with torch.autocast(device_type=device_type, dtype=dtype):
                pass
    except (RuntimeError, UserWarning, AssertionError) as e:
        raise ValueError(f"amp={amp!r} is not supported on {device_type} by torch {torch.__version__} "
                         f"({_first_line(e)})") from None
    return dtype


def _memory_format(model, example: torch.Tensor):
    """(the memory format to convert inputs to or None, a note why none)."""
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))] \
        if isinstance(model, nn.Module) else []
    if not convs:
        return None, "channels_last skipped: the model has no Conv2d/Conv3d layer"
    if example.dim() == 4 and any(isinstance(m, nn.Conv2d) for m in convs):
        return torch.channels_last, None
    if example.dim() == 5 and any(isinstance(m, nn.Conv3d) for m in convs):
        return torch.channels_last_3d, None
    return None, f"channels_last skipped: the inputs are {example.dim()}-D, not 4-D images for a Conv2d model"


def _logits(out):
    if isinstance(out, (tuple, list)) and out:
        return out[0]
    if isinstance(out, Mapping):
        return out.get("logits")
    return getattr(out, "logits", out)


def _trial(fn, example: torch.Tensor):
    """Forward and input gradient of ``fn`` on ``example``, in eval mode, leaving the
    global random state as it was; (logits, input gradient)."""
    devices = [example.device] if example.device.type == "cuda" else []
    x = example.detach().clone().requires_grad_(example.is_floating_point())
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        logits = _logits(fn(x))
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"the model returned {type(logits).__name__}, not logits")
        grad = None
        if x.requires_grad and logits.requires_grad:
            (grad,) = torch.autograd.grad(logits.float().sum(), x)
    return logits.detach(), grad


def _close(a, b, tol: float) -> bool:
    """``a`` matches ``b``: same shape, non-finite in the same places, finite values within
    ``tol`` times the largest magnitude of ``b``."""
    if a is None or b is None:
        return a is None and b is None
    if a.shape != b.shape:
        return False
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    if not torch.equal(fa, fb):
        return False
    if not fa.any():
        return True
    a, b = a[fa].float(), b[fb].float()
    return float((a - b).abs().max()) <= tol * max(float(b.abs().max()), 1e-30)


def accelerate(model, example: torch.Tensor, *, compile: bool = False, channels_last: bool = False,
               amp: str | None = None) -> tuple[callable, list[str]]:
    """The model for the attacks of an evaluation to call, and one-line notes for the user.

    ``amp`` ("bf16" or "fp16"): the forward runs under ``torch.autocast`` on the
    device of ``example``; inputs stay float32 and the logits come back float32.
    ``channels_last``: a convolutional model gets its 4-D inputs in channels-last
    memory format (the model's own weights are left as they are). ``compile``:
    ``torch.compile`` (dynamic shapes) of that forward, checked by a forward and an
    input gradient on ``example`` (a small batch of real inputs); on any failure, or
    outputs that disagree with eager, eager is used and a note says why.

    The returned wrapper is an ``nn.Module`` holding ``model`` (``modules()`` and
    ``parameters()`` reach it); with every option off, or none applicable, it is
    ``model`` itself. Nothing of ``model`` is modified.
    """
    if not isinstance(example, torch.Tensor):
        raise TypeError(f"example must be a tensor (a small batch of inputs); got {type(example).__name__}")
    notes: list[str] = []
    device_type = example.device.type
    amp_dtype = _amp_dtype(amp, device_type)
    if amp_dtype is torch.float16:
        notes.append("amp='fp16': small input gradients can underflow to zero in float16 "
                     "(reported as gradient masking); 'bf16' has float32's range")

    memory_format = None
    if channels_last:
        memory_format, why = _memory_format(model, example)
        if why:
            notes.append(why)

    if memory_format is None and amp_dtype is None and not compile:
        return model, notes
    wrapper = _Accelerated(model, memory_format=memory_format, amp_dtype=amp_dtype, device_type=device_type)
    if not compile:
        return wrapper, notes

    try:
        compiled = torch.compile(_own_forward(wrapper), dynamic=True)
        with eval_mode(wrapper):
            got = _trial(compiled, example)
            want = _trial(wrapper._eager, example)
        tol = 1e-3 if amp_dtype is None else 1e-1
        if not (_close(got[0], want[0], tol) and _close(got[1], want[1], tol)):
            raise RuntimeError("the compiled model's outputs or input gradients differ from eager")
    except Exception as e:  # noqa: BLE001  (no C++ compiler, an unsupported op, ...: run eager)
        notes.append(f"compile fell back to eager: {_first_line(e)}")
        if memory_format is None and amp_dtype is None:
            return model, notes
        return wrapper, notes
    wrapper._compiled = compiled
    return wrapper, notes
