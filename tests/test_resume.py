"""evaluate(..., checkpoint=PATH): killed with SIGKILL in the middle, a rerun resumes after
the last finished batch and gives the uninterrupted run's per-sample results; another
model, eps, attack list or seed is refused."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent('''
    import json, os, signal, sys
    import torch
    from torch import nn
    from advx.attacks import APGD, APGDT, Square
    from advx.data import load_digits
    from advx.eval import evaluate

    mode, path, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])

    class Row(nn.Linear):  # per-row products and sums: the same bits in any batch
        def forward(self, x):
            return (x[:, None, :] * self.weight[None]).sum(-1) + self.bias

    class Killer(nn.Module):  # SIGKILL at the kill_at-th forward pass: an abrupt stop
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0
        def forward(self, x):
            self.calls += 1
            if self.calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return self.inner(x)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), Row(64, 24), nn.ReLU(), Row(24, 10)).double()
    split = load_digits()
    x, y = split.test_images[:160].double(), split.test_labels[:160]
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(100):
        opt.zero_grad(); nn.functional.cross_entropy(net(x), y).backward(); opt.step()
    model = Killer(net).eval()
    attacks = [APGD(model, 0.1, steps=5, seed=0), APGDT(model, 0.1, steps=5, n_targets=2, seed=0),
               Square(model, 0.1, queries=20, seed=0)]
    ev = evaluate(model, (x, y), 0.1, attacks=attacks, batch_size=5, progress=False,
                  checkpoint=None if mode == "full" else path)
    print(json.dumps(ev.to_dict()["per_sample"]))
    print(model.calls, file=sys.stderr)  # the model calls of the whole run: the test kills half way
''')


def run(tmp_path, mode, kill_at=0):
    script = tmp_path / "evaluate_script.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, str(script), mode, str(tmp_path / "eval.ckpt"), str(kill_at)],
                          capture_output=True, text=True, env=env, timeout=600)


def test_killed_then_resumed_equals_uninterrupted(tmp_path):
    full = run(tmp_path, "full")
    assert full.returncode == 0, full.stderr
    calls = int(full.stderr.strip().splitlines()[-1])
    killed = run(tmp_path, "checkpoint", kill_at=calls // 2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = torch.load(tmp_path / "eval.ckpt", weights_only=True)
    assert 0 < state["done"] < 160  # stopped in the middle, after some chunks were saved
    resumed = run(tmp_path, "checkpoint")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout) == json.loads(full.stdout)
    # a finished checkpoint answers at once, with the same result
    again = run(tmp_path, "checkpoint")
    assert json.loads(again.stdout) == json.loads(full.stdout)


def test_other_settings_are_refused(tmp_path):
    from torch import nn

    from advx.attacks import APGD
    from advx.eval import evaluate

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).eval()
    x, y = torch.rand(12, 1, 4, 4), torch.randint(0, 5, (12,))
    path = tmp_path / "run.ckpt"
    first = evaluate(model, (x, y), 0.1, attacks=[APGD(model, 0.1, steps=2, seed=0)], batch_size=4,
                     progress=False, checkpoint=path)
    assert path.exists()
    same = evaluate(model, (x, y), 0.1, attacks=[APGD(model, 0.1, steps=2, seed=0)], batch_size=4,
                    progress=False, checkpoint=path)
    assert torch.equal(same.robust, first.robust)
    cases = {
        "eps": dict(eps=0.2),
        "attacks": dict(attacks=[APGD(model, 0.1, steps=3, seed=0)]),
        "seed": dict(seed=1),
        "data": dict(data=(x.flip(0), y.flip(0))),
    }
    for what, change in cases.items():
        kwargs = dict(data=(x, y), eps=0.1, attacks=[APGD(model, 0.1, steps=2, seed=0)], seed=0)
        kwargs.update(change)
        with pytest.raises(ValueError, match=f"its {what} differs"):
            evaluate(model, kwargs.pop("data"), batch_size=4, progress=False, checkpoint=path, **kwargs)
    other = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).eval()
    with pytest.raises(ValueError, match="its model differs"):
        evaluate(other, (x, y), 0.1, attacks=[APGD(other, 0.1, steps=2, seed=0)], batch_size=4, progress=False,
                 checkpoint=path)
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        evaluate(model, (x, y), 0.1, attacks=[APGD(model, 0.1, steps=2, seed=0)], progress=False,
                 checkpoint=tmp_path / "junk.ckpt")
