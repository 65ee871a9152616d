# The README's commands. Every target does its own set-up from a clean clone:
# a virtual environment in .venv, a pinned torch (override TORCH_SPEC for a CUDA
# build), the build dependencies, and advx built against that torch.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
DEPS := numpy pytest hypothesis expecttest scikit-build-core pybind11 ninja cmake scikit-learn matplotlib tqdm
STAMP := $(VENV)/.advx-deps

.PHONY: demo test bench install cuda-check clean

demo: install
	$(BIN)/advx demo --out advx-demo

test: install
	$(BIN)/python -m pytest -q tests
	$(MAKE) cuda-check

bench: install
	$(BIN)/python benchmarks/bench_ops.py

$(STAMP): Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q $(DEPS)
	$(PIP) install -q --no-deps torchattacks==3.5.1
	touch $@

# Editable, rebuilt on import when csrc/ changes; never build isolation (it would
# fetch a different torch than the one chosen above).
install: $(STAMP)
	$(PIP) install -q --no-build-isolation -C editable.rebuild=true -e .

# The CUDA build proven without a GPU: a second venv with a CUDA torch, a plain
# install of advx into it, its kernels and archs checked, the suite run against it.
# Skipped (saying so) where nvcc is absent.
cuda-check:
	DEPS="$(DEPS)" bash tools/cuda_build_check.sh

clean:
	rm -rf build advx-demo .venv-cuda
