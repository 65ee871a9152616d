"""Resumable evaluations: the per-sample results written atomically as they come, and
refused on a rerun whose model, data, budget, attacks or seed differ."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch

FORMAT = 1


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            t = part.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(part).encode())
    return h.hexdigest()[:16]


def _attack_settings(atk) -> dict:
    """An attack's configuration: its plain settings (numbers, strings, flags, budgets)."""
    out = {"class": type(atk).__name__}
    for key, value in sorted(vars(atk).items()):
        if key.startswith("_") or key == "model":
            continue
        if isinstance(value, torch.Tensor):
            value = _digest(value)
        if value is None or isinstance(value, (bool, int, float, str, tuple)):
            out[key] = value
    return out


def fingerprint(model, first_images, first_labels, n_samples, eps, norm, attacks, seed) -> dict:
    """What a checkpoint must agree on, one digest per part (so a refusal can name it)."""
    tensors = [t for _, t in sorted(model.state_dict().items())] if isinstance(model, torch.nn.Module) else []
    return {
        "model": _digest(type(model).__name__, *tensors),
        "data": _digest(n_samples, first_images, first_labels),
        "eps": repr(float(eps)),
        "norm": norm,
        "attacks": _digest([(name, _attack_settings(atk)) for name, atk in attacks]),
        "seed": repr(seed),
    }


def load(path) -> dict | None:
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a file that is not ours: say so rather than overwrite it
        raise ValueError(f"checkpoint {path} cannot be read as an advx evaluation checkpoint: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} is not an advx evaluation checkpoint (format {FORMAT})")
    return state


def check(state: dict, want: dict, path) -> None:
    differ = [k for k in want if state["fingerprint"].get(k) != want[k]]
    if differ:
        raise ValueError(f"checkpoint {path} belongs to another evaluation: its {', '.join(differ)} "
                         f"differ{'s' if len(differ) == 1 else ''} from this run's; pass another path "
                         "or delete the file to start over")


def save(path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file beside it, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({**state, "format": FORMAT}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
