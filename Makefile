# The README's commands. Every target does its own set-up from a clean clone:
# a virtual environment in .venv, a pinned torch with the torchvision that matches
# it, the build dependencies, and advx built against that torch.
#
# Settings (make VAR=value):
#   TORCH_SPEC   the torch to install (default torch==2.13.0)
#   TORCH_INDEX  the wheel index torch and torchvision come from (empty: pip's
#                own, where torch on Linux is the CUDA build, several GB); e.g.
#                https://download.pytorch.org/whl/cpu (CPU only, ~190 MB) or
#                https://download.pytorch.org/whl/cu130
#   TORCHVISION  installed in the same pip command as torch, so pip picks the one
#                built for that torch and never replaces it; uninstalled again if it
#                does not import (PyPI's torchvision is built for PyPI's CUDA torch:
#                beside a CPU torch from elsewhere it cannot load). Empty: none. Without
#                it the CLI's torchvision models and their tests are skipped.
#   V=1          show the commands, not only one line per stage
# Changing TORCH_SPEC, TORCH_INDEX or TORCHVISION installs again into .venv; to
# switch between a CPU and a CUDA build of the same torch version, `rm -rf .venv`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
TORCHVISION ?= torchvision>=0.17
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
DEPS := numpy pytest hypothesis expecttest scikit-build-core pybind11 ninja cmake scikit-learn matplotlib tqdm
TORCH_INDEX_ARGS := $(if $(strip $(TORCH_INDEX)),--index-url $(TORCH_INDEX))
# One stamp per set of settings: changing any of them installs again.
STAMP := $(VENV)/.advx-deps-$(shell echo '$(TORCH_SPEC) $(TORCH_INDEX) $(TORCHVISION) $(DEPS)' | md5sum | cut -c1-8)
Q := $(if $(filter 1,$(V)),,@)
# -qq: pip's errors only (its warnings about unreachable extra indexes are noise here);
# no conflict report: torchattacks is installed without its pins (requests~=2.25.1,
# used only by its dataset downloads), which pip reports after every later install.
PIPQ := $(if $(filter 1,$(V)),-q,-qq)
INSTALL := $(PIP) install $(PIPQ) --no-warn-conflicts
say = @echo "[advx] $(1)"

.PHONY: demo test bench install cuda-check clean

demo: install
	$(call say,running the demo: advx demo --out advx-demo)
	$(Q)$(BIN)/advx demo --out advx-demo

test: install
	$(call say,running the test suite: pytest tests)
	$(Q)$(BIN)/python -m pytest -q tests
	$(Q)$(MAKE) --no-print-directory cuda-check

bench: install
	$(Q)$(BIN)/python benchmarks/bench_ops.py

$(STAMP): Makefile
	$(Q)if test -x $(BIN)/python; then echo "[advx] updating $(VENV)"; \
	else echo "[advx] creating $(VENV) ($(PYTHON) -m venv)"; $(PYTHON) -m venv $(VENV); fi
	$(Q)$(INSTALL) --upgrade pip
	$(call say,installing $(TORCH_SPEC)$(if $(strip $(TORCHVISION)), and its torchvision)$(if $(TORCH_INDEX_ARGS), from $(TORCH_INDEX)) (the first time: a minute or more))
	$(Q)$(INSTALL) $(TORCH_INDEX_ARGS) "$(TORCH_SPEC)" $(if $(strip $(TORCHVISION)),"$(TORCHVISION)")
ifneq ($(strip $(TORCHVISION)),)
	$(Q)$(BIN)/python -c "import torchvision" 2> /dev/null || { \
	  echo "[advx] torchvision does not load with this torch (a CUDA torchvision beside a CPU torch?): uninstalled, its tests skip"; \
	  $(PIP) uninstall $(PIPQ) -y torchvision; }
endif
	$(call say,installing build and test dependencies)
	$(Q)$(INSTALL) $(DEPS)
	$(Q)$(INSTALL) --no-deps torchattacks==3.5.1
	$(Q)rm -f $(VENV)/.advx-deps*
	$(Q)touch $@

# Editable (python/advx is used in place), never rebuilt on import: importing advx while
# a rebuild-on-import ran could crash. csrc/ changes are built by running this again
# (`make test` and `make demo` do): incremental, in the kept build directory (build-dir
# in pyproject.toml). Never build isolation (it would fetch a different torch than the
# one chosen above).
install: $(STAMP)
	$(call say,building advx into $(VENV) (the first time: about a minute; then only what changed))
	$(Q)$(INSTALL) --no-build-isolation -e .

# The CUDA build proven without a GPU: a second venv with a CUDA torch, a plain
# install of advx into it, its kernels and archs checked, the suite run against it.
# Skipped (saying so) where nvcc is absent.
cuda-check:
	$(Q)DEPS="$(DEPS)" TORCHVISION="$(TORCHVISION)" bash tools/cuda_build_check.sh

clean:
	rm -rf build advx-demo .venv-cuda
