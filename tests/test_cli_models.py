"""The CLI as a new user meets it: torchvision names offline (--weights), a missing or
broken torchvision, class folders named by class, saved PNGs inside the budget and the
numbers of what was saved, .pt output, JSON precision, bench --out, and the README's
commands as written."""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advx.cli import main
from advx.data import load_digits

ROOT = Path(__file__).resolve().parents[1]

# A stand-in torchvision for machines without a working one: the same calls the CLI
# makes, a small model, 1000 categories with a few real ImageNet names, and a download
# that fails the way it fails offline.
FAKE_TORCHVISION = {
    "__init__.py": """
        import os
        if os.environ.get("FAKE_TORCHVISION_BROKEN"):
            raise RuntimeError("operator torchvision::nms does not exist")
        from . import models
        __version__ = "0.0-fake"
    """,
    "models.py": """
        import urllib.error
        import torch
        from torch import nn

        CATEGORIES = [f"class {i}" for i in range(1000)]
        CATEGORIES[207], CATEGORIES[281] = "golden retriever", "tabby"

        class _Weights:
            class DEFAULT:
                meta = {"categories": CATEGORIES}

        def list_models(module=None):
            return ["resnet18"]

        def get_model_weights(name):
            return _Weights

        def get_model(name, weights=None):
            if weights is not None:
                raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
            torch.manual_seed(0)
            return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 1000))
    """,
}


def _torchvision_works() -> bool:
    proc = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True)
    return proc.returncode == 0


@pytest.fixture(scope="module")
def fake_torchvision(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake-tv")
    for name, text in FAKE_TORCHVISION.items():
        (root / "torchvision").mkdir(exist_ok=True)
        (root / "torchvision" / name).write_text(textwrap.dedent(text))
    return root


def _advx(argv, env_extra=None, cwd=None, timeout=600):
    env = dict(os.environ, **(env_extra or {}))
    proc = subprocess.run([sys.executable, "-m", "advx", *argv], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Generated RGB 'photos' in class folders named by ImageNet class name."""
    root = tmp_path_factory.mktemp("photos")
    gen = np.random.default_rng(0)
    for folder in ("golden_retriever", "tabby"):
        (root / folder).mkdir()
        for i in range(3):
            Image.fromarray(gen.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / folder / f"{i}.jpg")
    return root


def test_torchvision_name_offline(fake_torchvision, photos, tmp_path, digits_cache_dir):
    env = {"PYTHONPATH": f"{fake_torchvision}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "ADVX_CACHE_DIR": str(digits_cache_dir)}
    # the default weights need a download: offline that is one line naming the way out
    code, out, err = _advx(["attack", "--model", "resnet18", "--images", str(photos), "--size", "16"], env)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "could not download resnet18's pretrained weights" in err and "--weights none" in err
    # --weights none downloads nothing; the folder names map to the model's classes
    code, out, err = _advx(["attack", "--model", "resnet18", "--weights", "none", "--images", str(photos),
                            "--size", "16", "--eps", "0.01", "--steps", "2", "--out", str(tmp_path / "adv")], env)
    assert code == 0, err
    assert json.loads((tmp_path / "adv" / "attack.json").read_text())["n_images"] == 6
    assert sorted(p.parent.name for p in (tmp_path / "adv" / "adversarial").rglob("*.png")) == \
        ["golden_retriever"] * 3 + ["tabby"] * 3
    code, out, err = _advx(["eval", "--model", "resnet18", "--weights", "none", "--images", str(photos),
                            "--size", "16", "--eps", "0.01", "--attacks", "fgsm", "--json",
                            str(tmp_path / "e.json")], env)
    assert code == 0, err
    # a random network rarely says 'tabby': no mapping would have made the labels 0 and 1
    assert "do not look like this model's classes" not in err
    # a state_dict file as weights
    sd = tmp_path / "sd.pt"
    torch.manual_seed(1)
    torch.save(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                   torch.nn.Linear(48, 1000)).state_dict(), sd)
    code, out, err = _advx(["attack", "--model", "resnet18", "--weights", str(sd), "--images", str(photos),
                            "--size", "16", "--attack", "fgsm", "--eps", "0.01"], env)
    assert code == 0, err


def test_broken_torchvision_is_one_line(fake_torchvision, digits_cache_dir, tmp_path):
    env = {"PYTHONPATH": f"{fake_torchvision}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "FAKE_TORCHVISION_BROKEN": "1", "ADVX_CACHE_DIR": str(digits_cache_dir)}
    code, out, err = _advx(["info"], env)
    assert code == 0 and "torchvision broken (RuntimeError" in out, out + err
    code, out, err = _advx(["attack", "--model", "resnet18", "--images", str(tmp_path)], env)
    assert code == 2 and err.count("\n") == 1 and "does not import" in err, err
    # the digits path writes PNGs and figures without torchvision
    code, out, err = _advx(["attack", "--limit", "8", "--steps", "2", "--out", str(tmp_path / "a")], env)
    assert code == 0 and len(list((tmp_path / "a" / "adversarial").glob("*.png"))) == 8, err
    code, out, err = _advx(["visualize", "--targets", "1", "--steps", "2", "--out", str(tmp_path / "v")], env)
    assert code == 0 and (tmp_path / "v" / "class_1.png").exists(), err


@pytest.fixture(scope="module")
def named_folders(tmp_path_factory):
    """Digits 2 and 7 as PNGs in folders 'seven' and 'two' (sorted: seven=0, two=1)."""
    root = tmp_path_factory.mktemp("named")
    split = load_digits()
    for digit, name in ((2, "two"), (7, "seven")):
        (root / name).mkdir()
        idx = (split.test_labels == digit).nonzero().flatten()[:8]
        for i in idx.tolist():
            pixels = (split.test_images[i, 0].numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_class_folders_named_by_the_models_class_names(named_folders, tmp_path, capsys, digits_cache_dir):
    from advx.models import train_digits_cnn

    model = train_digits_cnn(digits_cache_dir)
    plain = tmp_path / "plain.pt"
    torch.save(model, plain)
    # no class names: folders numbered in sorted order, which this model disagrees with
    code, out, err = _run(capsys, "attack", "--model", str(plain), "--images", str(named_folders), "--grayscale",
                          "--eps", "0.05", "--steps", "2")
    assert code == 0
    assert json.loads(out)["clean_accuracy"] == 0.0
    assert err.count("\n") == 1 and "warning: clean accuracy 0.0000" in err and "sorted order" in err
    # a model that says its class names: 'two' is class 2, 'seven' class 7
    model.class_names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    named = tmp_path / "named.pt"
    torch.save(model, named)
    code, out, err = _run(capsys, "attack", "--model", str(named), "--images", str(named_folders), "--grayscale",
                          "--eps", "0.05", "--steps", "2")
    assert code == 0 and json.loads(out)["clean_accuracy"] >= 0.9 and "warning" not in err
    # three images in made-up sorted folders are enough to say so
    few = tmp_path / "few"
    for name in ("cat", "dog"):
        (few / name).mkdir(parents=True)
    for f in sorted((named_folders / "two").glob("*.png"))[:3]:
        (few / "dog" / f.name).write_bytes(f.read_bytes())  # 'dog' is label 1: the model says 2
    code, out, err = _run(capsys, "eval", "--model", str(plain), "--images", str(few), "--grayscale",
                          "--eps", "0.05", "--attacks", "fgsm")
    assert code == 0 and "warning: clean accuracy 0.0000" in err


def test_saved_pngs_hold_the_budget_and_the_report_describes_them(tmp_path, capsys, digits_cache_dir):
    from advx.models import train_digits_cnn

    eps = 0.1
    code, out, _ = _run(capsys, "attack", "--cache-dir", str(digits_cache_dir), "--limit", "120", "--eps", str(eps),
                        "--steps", "10", "--out", str(tmp_path / "a"))
    assert code == 0
    summary = json.loads((tmp_path / "a" / "attack.json").read_text())
    assert json.loads(out[:out.rindex("}") + 1]) == summary
    files = sorted((tmp_path / "a" / "adversarial").glob("*.png"))
    saved = torch.stack([torch.from_numpy(np.asarray(Image.open(f), dtype=np.float32) / 255.0)[None] for f in files])
    split = load_digits()
    x, y = split.test_images[:120], split.test_labels[:120]
    assert float((saved - x).abs().max()) <= eps
    model = train_digits_cnn(digits_cache_dir)
    with torch.no_grad():
        robust = int((model(saved).argmax(1) == y).sum()) / 120
    # the reported robust accuracy is that of the files (7 significant digits in the JSON)
    assert summary["robust_accuracy"] == pytest.approx(robust, rel=1e-6)
    assert "before_rounding" in summary and summary["max_norm"] <= eps
    # JSON without float32 noise: the eps as given, rates as exact fractions
    assert summary["eps"] == eps
    assert summary["success_rate"] == pytest.approx(round(summary["success_rate"] * 120) / 120, rel=1e-6)
    assert all(len(repr(v)) <= 12 for v in summary.values() if isinstance(v, float))


def test_pt_output_is_float_and_torchattacks_shaped(tmp_path, capsys, digits_cache_dir):
    code, out, _ = _run(capsys, "attack", "--cache-dir", str(digits_cache_dir), "--limit", "10", "--norm", "l2",
                        "--eps", "0.5", "--steps", "5", "--format", "pt", "--out", str(tmp_path / "a"))
    assert code == 0
    saved = torch.load(tmp_path / "a" / "adversarial.pt")
    assert set(saved) >= {"adv_inputs", "labels", "preds", "clean_inputs"}
    adv, x = saved["adv_inputs"], saved["clean_inputs"]
    assert adv.dtype == torch.float32 and adv.shape == (10, 1, 8, 8)
    assert (adv * 255 - (adv * 255).round()).abs().max() > 1e-3  # not quantized
    assert float((adv - x).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-6
    assert not (tmp_path / "a" / "adversarial").exists()


def test_fgsm_in_l2_is_the_fast_gradient_method(capsys, digits_cache_dir):
    code, out, _ = _run(capsys, "attack", "--cache-dir", str(digits_cache_dir), "--limit", "30", "--attack", "fgsm",
                        "--norm", "l2", "--eps", "0.5")
    summary = json.loads(out)
    assert code == 0 and summary["norm"] == "l2" and summary["attack"] == "FGM"
    assert summary["max_norm"] <= 0.5 + 1e-6 and summary["mean_norm"] > 0.4  # an L2 step, not an L-inf one


def test_eval_defaults_fit_the_norm(capsys, digits_cache_dir, tmp_path):
    code, out, err = _run(capsys, "eval", "--cache-dir", str(digits_cache_dir), "--limit", "12", "--norm", "l2",
                          "--eps", "0.25", "0.5", "--apgd-steps", "3", "--queries", "10",
                          "--json", str(tmp_path / "e.json"))
    assert code == 0, err
    report = json.loads((tmp_path / "e.json").read_text())
    assert [r["eps"] for r in report["attacks"] if r["name"] == "worst case"] == [0.25, 0.5]
    assert {r["name"] for r in report["attacks"]} == {"APGD-CE", "APGD-T", "Square", "worst case"}
    text = (tmp_path / "e.json").read_text()
    assert not re.search(r"\d\.\d{9,}", text), "float32 noise in the JSON"
    code, out, err = _run(capsys, "eval", "--cache-dir", str(digits_cache_dir), "--limit", "12", "--norm", "l1",
                          "--eps", "2", "--apgd-steps", "3")
    assert code == 0, err
    assert "after APGD-CE" in out and "after APGD-T" in out and "Square" not in out


def test_bench_writes_only_where_out_says(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = _run(capsys, "bench", "--quick", "--device", "cpu", "--out", str(tmp_path / "t" / "b.md"))
    assert code == 0
    assert "| pgd_step_ linf |" in (tmp_path / "t" / "b.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def _readme_commands() -> list:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Command line", 1)[1].split("```", 2)[1]
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line.startswith("advx ")]


def test_readme_commands_run_offline_as_written(tmp_path, fake_torchvision, photos, digits_cache_dir):
    from advx.models import train_digits_cnn

    # the stand-ins the README assumes: photos/, a saved model and its data folder
    (tmp_path / "photos").symlink_to(photos, target_is_directory=True)
    torch.save(train_digits_cnn(digits_cache_dir), tmp_path / "model.pt")
    split = load_digits()
    for i in range(12):
        folder = tmp_path / "data" / str(int(split.test_labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (split.test_images[i, 0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    env = {"ADVX_CACHE_DIR": str(digits_cache_dir)}
    if not _torchvision_works():
        env["PYTHONPATH"] = f"{fake_torchvision}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    commands = _readme_commands()
    assert any("resnet18" in c for c in commands) and any(c.startswith("advx eval") for c in commands)
    for command in commands:
        argv = command.split()[1:]
        argv = [a for a in argv if a not in ("[--quick]",)]
        if argv[0] == "demo":
            argv.append("--quick")  # the full demo is `make demo`'s job
        if argv[0] == "bench":
            argv.append("--quick")
        if argv[0] == "eval":
            argv += ["--apgd-steps", "2", "--queries", "5"]  # the README's cascade, shortened
        code, out, err = _advx(argv, env, cwd=tmp_path)
        assert code == 0, f"{command}\n{err}"
        assert "Traceback" not in err


def test_readme_python_example_runs_verbatim(tmp_path, monkeypatch, digits_cache_dir):
    text = (ROOT / "README.md").read_text()
    code = text.split("## Example", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADVX_CACHE_DIR", str(digits_cache_dir))
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "classes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
