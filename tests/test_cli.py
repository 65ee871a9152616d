"""The advx command: --help everywhere, info, the quick demo, and attack / eval /
visualize / bench on the digits model, a saved model file and an image folder."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advx.cli import build_parser, main
from advx.data import load_digits
from advx.models import train_digits_cnn

SUBCOMMANDS = ["demo", "attack", "eval", "visualize", "bench", "info"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits_model(digits_cache_dir):
    return train_digits_cnn(digits_cache_dir)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """12 digits test images as PNGs, one folder per class."""
    root = tmp_path_factory.mktemp("digits-folder")
    split = load_digits()
    for i in range(12):
        folder = root / str(int(split.test_labels[i]))
        folder.mkdir(exist_ok=True)
        pixels = (split.test_images[i, 0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
    return root


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_console_script_help():
    script = Path(sys.executable).parent / "advx"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "advx.cli"]
    proc = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in SUBCOMMANDS:
        assert name in proc.stdout


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: advx {command}")


def test_no_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "command" in capsys.readouterr().err


def test_info(capsys):
    import advx

    code, out, _ = run_cli(capsys, "info")
    assert code == 0
    assert f"advx {advx.__version__}" in out and torch.__version__ in out and "openmp=" in out
    code, out, _ = run_cli(capsys, "info", "--json")
    info = json.loads(out)
    assert info["build"] == advx.build_info() and info["torch"] == torch.__version__
    assert info["cuda_available"] == torch.cuda.is_available()


def test_demo_quick(tmp_path, digits_model, digits_cache_dir, capsys):
    out_dir = tmp_path / "demo"
    threads = torch.get_num_threads()
    code, out, _ = run_cli(capsys, "demo", "--quick", "--out", str(out_dir), "--cache-dir", str(digits_cache_dir),
                           "--device", "cpu")
    assert code == 0 and "report.md" in out
    results = json.loads((out_dir / "results.json").read_text())
    assert results["clean_accuracy"] >= 0.95
    rows = results["attacks"]
    assert {r["name"] for r in rows} == {"FGSM", "PGD"} and {r["norm"] for r in rows} == {"linf", "l2"}
    for r in rows:
        assert set(r) >= {"name", "norm", "eps", "robust_accuracy"}
        assert 0.0 <= r["robust_accuracy"] <= results["clean_accuracy"]
    pgd_linf = {r["eps"]: r["robust_accuracy"] for r in rows if r["name"] == "PGD" and r["norm"] == "linf"}
    assert pgd_linf[0.1] < results["clean_accuracy"] - 0.2  # well below clean
    assert pgd_linf[0.1] <= pgd_linf[0.05]  # a larger budget never helps the model
    report = (out_dir / "report.md").read_text()
    assert f"{results['clean_accuracy']:.4f}" in report
    for figure in results["figures"]:
        assert (out_dir / figure).read_bytes()[:8] == PNG_SIGNATURE
        assert f"]({figure})" in report
    assert {"adversarial_pgd.png", "class_visualizations.png"} <= set(results["figures"])
    assert {"pgd_step_ linf", "edge_energy fwd+bwd"} <= {t["op"] for t in results["timing"]}
    assert all(t["advx_ms"] > 0 and t["reference_ms"] > 0 for t in results["timing"])
    vis = results["visualizations"]
    assert vis["edge-energy prior"]["mean_edge_energy"] < vis["no prior"]["mean_edge_energy"]
    assert vis["no prior"]["predicted_as_target"] >= 8
    assert "changed_at_2x_radius" in results["random_sphere"]
    assert [o["optimizer"] for o in results["optimizers"]["results"]] == ["sgd", "rmsprop", "adam"]
    assert all(o["final_loss"] < 0.5 * o["initial_loss"] for o in results["optimizers"]["results"])
    assert "loss_curves.png" in results["figures"]
    assert torch.get_num_threads() == threads  # the demo gives the thread count back
    assert results["model_source"].startswith("loaded from")  # the fixture trained and cached it


def test_attack_on_saved_model_and_folder(tmp_path, digits_model, image_folder, capsys):
    model_file = tmp_path / "model.pt"
    torch.save(digits_model, model_file)
    out_dir = tmp_path / "attack"
    code, out, _ = run_cli(capsys, "attack", "--model", str(model_file), "--images", str(image_folder),
                           "--grayscale", "--eps", "0.2", "--steps", "10", "--out", str(out_dir))
    assert code == 0
    summary = json.loads((out_dir / "attack.json").read_text())
    assert summary["n_images"] == 12 and summary["clean_accuracy"] >= 0.9
    assert summary["robust_accuracy"] < summary["clean_accuracy"]
    assert summary["mean_norm"] <= 0.2 + 1e-6
    saved = sorted((out_dir / "adversarial").rglob("*.png"))
    expected = sorted(p.relative_to(image_folder) for p in image_folder.rglob("*.png"))
    assert [p.relative_to(out_dir / "adversarial") for p in saved] == expected
    with Image.open(saved[0]) as im:
        assert im.size == (8, 8)
    assert (out_dir / "examples.png").read_bytes()[:8] == PNG_SIGNATURE


def test_attack_digits_default_data_targeted(capsys, digits_cache_dir):
    code, out, _ = run_cli(capsys, "attack", "--cache-dir", str(digits_cache_dir), "--limit", "16",
                           "--norm", "l2", "--eps", "2.0", "--steps", "20", "--target-class", "3")
    assert code == 0
    summary = json.loads(out)
    assert summary["targeted"] and summary["n_images"] == 16 and summary["success_rate"] > 0.5
    code, out, _ = run_cli(capsys, "attack", "--cache-dir", str(digits_cache_dir), "--limit", "16",
                           "--attack", "fgsm", "--eps", "0.1")
    assert code == 0 and json.loads(out)["attack"] == "FGSM"


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_eval_torchscript_flat_folder_json(tmp_path, digits_model, image_folder, capsys):
    scripted = tmp_path / "model_ts.pt"
    torch.jit.save(torch.jit.script(digits_model), scripted)
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in sorted(image_folder.rglob("*.png"))[:6]:
        (flat / f.name).write_bytes(f.read_bytes())
    report_file = tmp_path / "eval.json"
    code, out, _ = run_cli(capsys, "eval", "--model", str(scripted), "--images", str(flat), "--grayscale",
                           "--eps", "0.05", "0.3", "--attacks", "fgsm", "pgd", "--json", str(report_file))
    assert code == 0 and "model's own predictions" in out
    report = json.loads(report_file.read_text())
    assert report["clean_accuracy"] == 1.0 and report["n_samples"] == 6
    assert [(r["name"], r["eps"]) for r in report["attacks"]] == [
        ("FGSM", 0.05), ("FGSM", 0.3), ("PGD", 0.05), ("PGD", 0.3), ("worst case", 0.05), ("worst case", 0.3)]
    pgd = [r["robust_accuracy"] for r in report["attacks"] if r["name"] == "PGD"]
    assert pgd[1] <= pgd[0] and pgd[1] < 1.0
    assert len(report["evaluations"][0]["per_sample"]) == 6


def test_eval_default_cascade(capsys, digits_cache_dir, tmp_path):
    report_file = tmp_path / "eval.json"
    code, out, _ = run_cli(capsys, "eval", "--cache-dir", str(digits_cache_dir), "--limit", "40", "--eps", "0.1",
                           "--apgd-steps", "10", "--queries", "50", "--json", str(report_file))
    assert code == 0
    assert "after apgd" in out.lower() and "Square" in out and "(40 samples)" in out
    ev = json.loads(report_file.read_text())["evaluations"][0]
    assert ev["attacks"] == ["APGD-CE", "APGD-T", "Square"]
    assert ev["robust_accuracy"] <= min(a["robust_accuracy"] for a in ev["after_attack"])


def test_eval_early_exit_off_and_bf16(capsys, digits_cache_dir, tmp_path):
    """--no-early-exit: the same per-sample results with more passes; --amp bf16 runs."""
    common = ["eval", "--cache-dir", str(digits_cache_dir), "--limit", "48", "--eps", "0.1", "--attacks", "pgd",
              "--steps", "20"]
    reports = []
    for extra in ([], ["--no-early-exit"]):
        path = tmp_path / f"eval{len(reports)}.json"
        code, out, _ = run_cli(capsys, *common, *extra, "--json", str(path))
        assert code == 0 and "work:" in out and "sample-passes" in out
        reports.append(json.loads(path.read_text())["evaluations"][0])
    on, off = reports
    # the CNN's rounding may move with the batch's composition: a knife-edge sample may flip
    flips = sum(a["robust"] != b["robust"] for a, b in zip(on["per_sample"], off["per_sample"]))
    assert flips <= 1
    assert on["stats"]["forward_backward"] < off["stats"]["forward_backward"]
    code, out, _ = run_cli(capsys, *common, "--amp", "bf16")
    assert code == 0 and "(48 samples)" in out


def test_eval_digits_l2(capsys, digits_cache_dir):
    code, out, _ = run_cli(capsys, "eval", "--cache-dir", str(digits_cache_dir), "--limit", "64",
                           "--attacks", "pgd", "--norm", "l2", "--eps", "1.5", "--steps", "10")
    assert code == 0
    assert "PGD" in out and "l2" in out and "1.5" in out and "(64 samples)" in out


def test_visualize_classes_and_layer(tmp_path, capsys, digits_cache_dir):
    out_dir = tmp_path / "vis"
    code, out, _ = run_cli(capsys, "visualize", "--cache-dir", str(digits_cache_dir), "--targets", "1", "7",
                           "--steps", "20", "--prior-weight", "0", "--out", str(out_dir))
    assert code == 0 and "class 7: response" in out
    assert sorted(p.name for p in out_dir.iterdir()) == ["class_1.png", "class_7.png", "visualizations.png"]
    code, out, _ = run_cli(capsys, "visualize", "--cache-dir", str(digits_cache_dir), "--layer", "features.conv1",
                           "--targets", "2", "--unit", "3", "3", "--steps", "10", "--prior-weight", "0",
                           "--out", str(out_dir / "layer"))
    assert code == 0 and "features.conv1 channel 2" in out


@pytest.mark.parametrize("argv, message", [
    (["visualize", "--layer", "nope", "--prior-weight", "0"], "valid names: features"),
    (["visualize", "--shape", "1", "8"], "--shape takes C H W"),
    (["attack", "--model", "no_such_model_xyz", "--images", "."], "no_such_model_xyz"),
    (["attack", "--model", "digits", "--mean", "0.5"], "--mean and --std"),
    (["eval", "--model", "{model}"], "--images is required"),
    (["eval", "--attacks", "square", "--norm", "l1"], "norm"),
    (["attack", "--images", "{missing}"], "not a directory"),
    (["attack", "--model", "{model}", "--images", "{folder}", "--size", "16"], "cannot take the images"),
    (["attack", "--eps", "-1", "--limit", "2"], "argument --eps: must be > 0"),
])
def test_user_errors_exit_2_with_a_message(argv, message, capsys, tmp_path, digits_model, image_folder,
                                           digits_cache_dir):
    model_file = tmp_path / "m.pt"
    torch.save(digits_model, model_file)
    argv = [a.format(model=model_file, missing=tmp_path / "missing", folder=image_folder) for a in argv]
    try:
        code, _, err = run_cli(capsys, *argv, "--cache-dir", str(digits_cache_dir))
    except SystemExit as e:  # argparse's own checks
        code, err = e.code, capsys.readouterr().err
    assert code == 2
    assert message in err and err.startswith(f"advx {argv[0]}: error:")


def test_bench_builtin(capsys):
    code, out, _ = run_cli(capsys, "bench", "--builtin", "--quick", "--device", "cpu")
    assert code == 0
    assert "| pgd_step_ linf |" in out and "| project_ l2 |" in out


def test_bench_times_with_the_package_only(capsys, monkeypatch, tmp_path):
    import subprocess

    def no_subprocess(*args, **kwargs):
        raise AssertionError("advx bench must not run scripts: an installed package has no checkout")

    monkeypatch.setattr(subprocess, "call", no_subprocess)
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.chdir(tmp_path)  # no benchmarks/ here either
    code, out, _ = run_cli(capsys, "bench", "--attacks", "--quick", "--device", "cpu")
    assert code == 0
    assert "| PGD-linf x10 |" in out and "| PGD-l2 x10 |" in out
    code, out, _ = run_cli(capsys, "bench", "--quick", "--device", "cpu")
    assert code == 0 and "| pgd_step_ linf |" in out


def test_bench_eval_quick(capsys, digits_cache_dir, monkeypatch):
    monkeypatch.setenv("ADVX_CACHE_DIR", str(digits_cache_dir))
    code, out, _ = run_cli(capsys, "bench", "--eval", "--quick", "--device", "cpu")
    assert code == 0
    assert "| digits CNN | 100 images, 20 steps, 200 queries | advx.eval.evaluate |" in out
    assert "torchattacks 3.5.1 cascade" in out
    # each cheaper-pass option timed alone (its share of the speed-up)
    assert "advx.eval.evaluate, amp='bf16'" in out and "advx.eval.evaluate, channels_last=True" in out


def test_version(capsys):
    import advx

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"advx {advx.__version__}"


def test_parser_lists_every_subcommand():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(SUBCOMMANDS)
    assert os.path.basename(parser.prog) == "advx"
