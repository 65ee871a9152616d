"""evaluate() under torch.distributed: two CPU processes (gloo, launched by torchrun as a
user would) give the per-sample JSON of a one-process run, in dataset order. 96 images in
batches of 16 split into shards of whole batches, so the digits CNN (whose convolutions
may round differently with the batch size) sees the same batches in both runs; shards that
cut batches are covered by tests/test_batch_independence.py on a batch-invariant model."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

ARGS = ["eval", "--limit", "96", "--batch-size", "16", "--attacks", "apgd-ce", "apgd-t", "square",
        "--apgd-steps", "4", "--queries", "20", "--eps", "0.1", "--device", "cpu", "--seed", "3"]


def run(cmd, cache, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), ADVX_CACHE_DIR=str(cache), OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)


def test_two_gloo_ranks_equal_one_process(tmp_path, digits_cache_dir):
    one = run([sys.executable, "-m", "advx", *ARGS, "--cache-dir", str(digits_cache_dir), "--json",
               str(tmp_path / "one.json")], digits_cache_dir, tmp_path)
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two = run([*torchrun, "-m", "advx", *ARGS, "--cache-dir", str(digits_cache_dir), "--json",
               str(tmp_path / "two.json")], digits_cache_dir, tmp_path)
    assert two.returncode == 0, two.stdout + two.stderr
    a = json.loads((tmp_path / "one.json").read_text())["evaluations"][0]
    b = json.loads((tmp_path / "two.json").read_text())["evaluations"][0]
    assert [s["index"] for s in b["per_sample"]] == list(range(96))
    assert b["per_sample"] == a["per_sample"]
    assert b["robust_accuracy"] == a["robust_accuracy"] and a["robust_accuracy"] < a["clean_accuracy"]
    assert two.stdout.count("robust") == one.stdout.count("robust")  # rank 0 alone prints
