"""Every option of every subcommand, given a bad value: exit status 2, one line on stderr
starting 'advx <command>: error:', no traceback, nothing written."""
import pytest
import torch

from advx.cli import main


def _run(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own checks exit from parse_args
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def paths(tmp_path_factory, digits_cache_dir):
    from advx.models import train_digits_cnn

    root = tmp_path_factory.mktemp("cli-errors")
    model = train_digits_cnn(digits_cache_dir)
    torch.save(model, root / "model.pt")
    torch.save({"not": "weights"}, root / "junk.pt")
    torch.save(torch.nn.Linear(3, 2).state_dict(), root / "other_state.pt")
    (root / "empty").mkdir()
    (root / "a_file").write_text("not a folder")
    return root


CASES = [
    # attack
    ("attack --target-class 99", "--target-class 99"),
    ("attack --target-class -1", "--target-class"),
    ("attack --batch-size 0", "--batch-size"),
    ("attack --batch-size two", "--batch-size"),
    ("attack --limit 0", "--limit"),
    ("attack --eps 0", "--eps"),
    ("attack --eps nan", "--eps"),
    ("attack --eps inf", "--eps"),
    ("attack --steps 0", "--steps"),
    ("attack --alpha -1", "--alpha"),
    ("attack --optimizer adam --lr 0", "--lr"),
    ("attack --lr 0.1", "--lr"),
    ("attack --seed -1", "--seed"),
    ("attack --size 0 --images {root}", "--size"),
    ("attack --size 1 2 3 --images {root}/digits", "--size takes N or H W"),
    ("attack --mean 0.5", "--mean and --std"),
    ("attack --mean 0.5 --std 0", "--std"),
    ("attack --mean 0.5 0.5 --std 0.5", "--mean has 2 values"),
    ("attack --device foo", "--device"),
    ("attack --norm l3", "--norm"),
    ("attack --attack cw", "--attack"),
    ("attack --optimizer lbfgs", "--optimizer"),
    ("attack --format jpg --out {root}/x", "--format"),
    ("attack --weights {root}/missing.pt", "weights"),
    ("attack --weights {root}/junk.pt", "weights"),
    ("attack --weights {root}/other_state.pt", "does not fit"),
    ("attack --model {root}/model.pt --weights none", "own weights"),
    ("attack --model no_such_model_xyz --images {root}/digits", "no_such_model_xyz"),
    ("attack --images {root}/missing", "not a directory"),
    ("attack --images {root}/a_file", "not a directory"),
    ("attack --images {root}/empty", "no image files"),
    ("attack --attack fgsm --steps 3", "--steps does not apply to --attack fgsm"),
    ("attack --attack fgsm --optimizer adam", "--optimizer does not apply"),
    ("attack --limit 4 --out {root}/a_file", "a_file"),
    # eval
    ("eval --apgd-steps 0", "--apgd-steps"),
    ("eval --queries -5", "--queries"),
    ("eval --eps 0.1 -0.1", "--eps"),
    ("eval --attacks square --norm l1 --eps 1", "norm"),
    ("eval --attacks nope", "--attacks"),
    ("eval --amp fp8", "--amp"),
    ("eval --model {root}/model.pt", "--images is required"),
    ("eval --limit 0", "--limit"),
    ("eval --limit 4 --attacks fgsm --json {root}/a_file/x.json", "a_file"),
    # visualize
    ("visualize --targets 99 --steps 2", "out of range"),
    ("visualize --targets -1", "--targets"),
    ("visualize --layer nope --prior-weight 0", "valid names"),
    ("visualize --shape 1 8", "--shape takes C H W"),
    ("visualize --shape 0 8 8", "--shape"),
    ("visualize --layer features.conv1 --unit 99 99 --steps 2", "out of range"),
    ("visualize --steps 0", "--steps"),
    ("visualize --lr 0", "--lr"),
    ("visualize --prior-weight -1", "--prior-weight"),
    ("visualize --images {root}", "unrecognized arguments"),
    # bench, demo
    ("bench --threads 0", "--threads"),
    ("bench --device foo --quick", "--device"),
    ("demo --threads 0", "--threads"),
]


@pytest.fixture(scope="module")
def digits_folder(paths):
    import numpy as np
    from PIL import Image

    from advx.data import load_digits

    split = load_digits()
    for i in range(4):
        folder = paths / "digits" / str(int(split.test_labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((split.test_images[i, 0].numpy() * 255).round().astype(np.uint8)).save(folder / f"{i}.png")
    return paths / "digits"


@pytest.mark.parametrize("line, message", CASES, ids=[c[0] for c in CASES])
def test_a_bad_value_is_one_line_and_exit_2(line, message, capsys, paths, digits_folder, digits_cache_dir):
    argv = line.format(root=paths).split()
    argv += ["--cache-dir", str(digits_cache_dir)] if argv[0] not in ("bench", "demo") else []
    code, _, err = _run(capsys, argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"advx {argv[0]}: error:"), err
    assert message in lines[0], err
    assert "Traceback" not in err


def test_cuda_without_a_gpu_is_a_user_error(capsys, digits_cache_dir):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, err = _run(capsys, ["attack", "--device", "cuda", "--cache-dir", str(digits_cache_dir)])
    assert code == 2 and err.count("\n") == 1 and "no CUDA device" in err


def test_an_unexpected_failure_is_one_line_too(capsys, monkeypatch, digits_cache_dir):
    import advx.cli

    def broken(args):
        raise KeyError("something internal")

    monkeypatch.setattr(advx.cli, "cmd_info", broken)
    monkeypatch.delenv("ADVX_TRACEBACK", raising=False)
    code, _, err = _run(capsys, ["info"])
    assert code == 1 and err.count("\n") == 1 and "internal error: KeyError" in err and "ADVX_TRACEBACK" in err
    monkeypatch.setenv("ADVX_TRACEBACK", "1")
    with pytest.raises(KeyError):
        main(["info"])
