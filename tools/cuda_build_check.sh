#!/usr/bin/env bash
# The CUDA build of advx, proven on a machine without a GPU (run by `make test`).
# Where nvcc is found: a venv with a CUDA build of torch (the GPU machines' torch),
# a plain `pip install --no-build-isolation .` of the working tree into it, then
# tools/check_cuda_build.py (build_info, a CUDA kernel for every op, the archs in the
# binary) and the test suite against that build (CUDA tests skip: no GPU here).
# Without nvcc it skips, saying so. Settings: CUDA_VENV, CUDA_TORCH_SPEC; DEPS (required);
# TORCHVISION (installed in the same pip command as torch, so pip picks the one built for
# that torch: torchvision 0.26 for torch 2.11; empty: none).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CUDA_VENV:-.venv-cuda}
TORCH_SPEC=${CUDA_TORCH_SPEC:-torch==2.11.0}
TORCHVISION=${TORCHVISION-torchvision>=0.17}
DEPS=${DEPS:?set DEPS to the build and test dependencies (make cuda-check passes those of the Makefile)}

if ! command -v nvcc > /dev/null && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "cuda-check: nvcc not found, the CUDA build is NOT checked (skipped)"
  exit 0
fi
t0=$(date +%s)
stamp="$VENV/.advx-deps-$(echo "$TORCH_SPEC $TORCHVISION $DEPS" | md5sum | cut -c1-8)"
if [ ! -f "$stamp" ]; then
  echo "cuda-check: venv $VENV with $TORCH_SPEC${TORCHVISION:+ and its torchvision}"
  test -x "$VENV/bin/python" || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -qq --upgrade pip
  "$VENV/bin/python" -m pip install -qq --no-warn-conflicts "$TORCH_SPEC" ${TORCHVISION:+"$TORCHVISION"} $DEPS
  "$VENV/bin/python" -m pip install -qq --no-deps torchattacks==3.5.1
  if [ -n "$TORCHVISION" ] && ! "$VENV/bin/python" -c "import torchvision" 2> /dev/null; then
    echo "cuda-check: torchvision does not load with $TORCH_SPEC: uninstalled, its tests skip"
    "$VENV/bin/python" -m pip uninstall -q -y torchvision
  fi
  touch "$stamp"
fi
"$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.version.cuda else \
  'cuda-check: $TORCH_SPEC is not a CUDA build of torch')"
t1=$(date +%s)
echo "cuda-check: building advx against $("$VENV/bin/python" -c 'import torch; print(torch.__version__)') ($((t1 - t0)) s so far)"
# Its own build directory: the editable CPU build keeps build/<wheel tag>.
"$VENV/bin/python" -m pip install -qq --no-build-isolation --no-deps -C build-dir=build/cuda-check .
t2=$(date +%s)
echo "cuda-check: built in $((t2 - t1)) s"
# Run from outside the tree so `import advx` is the installed CUDA build.
PY="$(cd "$VENV" && pwd)/bin/python"
(cd "${TMPDIR:-/tmp}" && "$PY" "$OLDPWD/tools/check_cuda_build.py")
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests
echo "cuda-check: done in $(( $(date +%s) - t0 )) s"
