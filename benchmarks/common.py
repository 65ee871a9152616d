"""What the benchmark scripts share: medians over repeats (advx.bench.median_seconds), a
same-run copy of the same bytes as the bandwidth yardstick, result rows and files."""
from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path
from typing import Callable

import torch

from advx.bench import median_seconds  # the timing rule of `advx bench` and the demo, too


def copy_gbps(nbytes: int, device="cpu") -> float:
    """Effective GB/s of a dst.copy_(src) that moves `nbytes` in all (half read, half
    written): the practical limit for a memory-bound op of that traffic on this
    machine, measured in this run."""
    n = max(1, nbytes // 8)
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    t = median_seconds(lambda: dst.copy_(src), device)
    return 2 * n * 4 / t / 1e9


def row(case: str, size: str, impl: str, seconds: float, *, advx_seconds: float | None = None,
        nbytes: int | None = None, copy: float | None = None) -> dict:
    """One result row. `ratio` is impl time / advx time (> 1 means advx is faster);
    `gbps` counts `nbytes` moved; `pct_copy` compares it with the same-run copy."""
    r = {"case": case, "size": size, "impl": impl, "median_ms": seconds * 1e3}
    if advx_seconds is not None:
        r["speedup_of_advx"] = seconds / advx_seconds
    if nbytes is not None:
        r["gbps"] = nbytes / seconds / 1e9
        if copy:
            r["pct_copy"] = 100.0 * r["gbps"] / copy
    return r


def compare(case: str, size: str, impls: dict[str, Callable[[], object]], device="cpu", *,
            nbytes: int | None = None, copy: float | None = None, **timing) -> list[dict]:
    """Time every implementation in `impls` (the first key must be the advx one) in
    this run and return rows with medians and the speedup of advx over each."""
    names = list(impls)
    secs = {name: median_seconds(impls[name], device, **timing) for name in names}
    base = secs[names[0]]
    return [row(case, size, name, secs[name], advx_seconds=base, nbytes=nbytes, copy=copy)
            for name in names]


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def run_meta(device: str, **extra) -> dict:
    """What a result file must name: device, torch and CUDA versions, advx build, date."""
    import advx

    return {
        "device": device, "device_name": device_name(device), "torch": torch.__version__,
        "cuda": torch.version.cuda, "advx": advx.__version__, "build": advx.build_info(),
        "date": datetime.date.today().isoformat(), "threads": torch.get_num_threads(), **extra,
    }


def write_results(out_dir, stem: str, meta: dict, rows: list[dict], markdown_text: str) -> None:
    """<out_dir>/<stem>.json (meta + raw rows) and <stem>.md (the tables)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / f"{stem}.md").write_text(markdown_text)
    print(f"wrote {out / stem}.json and .md")
