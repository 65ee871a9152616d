import pytest
import torch

import advx  # noqa: F401


def _float32_without_tf32():
    """float32 comparisons need IEEE float32: torch 2.11 runs float32 convolutions (the
    edge_energy reference, models under attack) in TF32 on Ampere+ GPUs by default, which
    is ~1e-3 relative error. The legacy switches keep torch's old and new precision flags
    consistent; the per-op conv/rnn flags are set too where they still say tf32."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cudnn_ops = [getattr(torch.backends.cudnn, op, None) for op in ("conv", "rnn")]
    if any(getattr(o, "fp32_precision", None) == "tf32" for o in cudnn_ops):
        for o in cudnn_ops:
            o.fp32_precision = "ieee"


_float32_without_tf32()


def _devices():
    devs = ["cpu"]
    if torch.cuda.is_available() and advx.build_info()["cuda"]:
        devs.append("cuda")
    return devs


DEVICES = _devices()
ALL_DEVICES = ["cpu", "cuda"]


def pytest_generate_tests(metafunc):
    # Tests take a `device` argument; "cuda" is listed always and skipped cleanly
    # when no GPU (or no CUDA build) is present, so the parametrization is visible.
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", ALL_DEVICES)


@pytest.fixture(autouse=True)
def _skip_missing_device(request):
    dev = request.node.callspec.params.get("device") if hasattr(request.node, "callspec") else None
    if dev is not None and dev not in DEVICES:
        pytest.skip(f"{dev} not available (no GPU or advx built without CUDA)")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits_cache_dir(tmp_path_factory):
    """One cache directory per test session: the digits CNN is trained once and shared."""
    return tmp_path_factory.getbasetemp() / "advx-cache"


def _skip_reason(report):
    """The reason of a skipped test, one line, without pytest's 'Skipped: ' prefix."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    reason = reason.strip().splitlines()[0] if reason.strip() else "no reason given"
    return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # Skips are counted by reason, one line each (pyproject's addopts has no `-rs`, which
    # lists every skipped test: ~100 lines of "cuda not available" on a machine without a
    # GPU). Where `-rs`/`-ra` is given, pytest's own list is shown as well.
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    counts = {}
    for report in skipped:
        reason = _skip_reason(report)
        counts[reason] = counts.get(reason, 0) + 1
    terminalreporter.section(f"{len(skipped)} skipped, by reason", sep="-")
    for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        terminalreporter.write_line(f"skipped {n:4d}: {reason}")
