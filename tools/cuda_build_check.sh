#!/usr/bin/env bash
# The CUDA build of advx, proven on a machine without a GPU (run by `make test`).
# Where nvcc is found: a venv with a CUDA build of torch (the GPU machines' torch),
# a plain `pip install --no-build-isolation .` of the working tree into it, then
# tools/check_cuda_build.py (build_info, a CUDA kernel for every op, the archs in the
# binary) and the test suite against that build (CUDA tests skip: no GPU here).
# Without nvcc it skips, saying so. Settings: CUDA_VENV, CUDA_TORCH_SPEC; DEPS (required).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CUDA_VENV:-.venv-cuda}
TORCH_SPEC=${CUDA_TORCH_SPEC:-torch==2.11.0}
DEPS=${DEPS:?set DEPS to the build and test dependencies (make cuda-check passes those of the Makefile)}

if ! command -v nvcc > /dev/null && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "cuda-check: nvcc not found, the CUDA build is NOT checked (skipped)"
  exit 0
fi
t0=$(date +%s)
stamp="$VENV/.advx-deps-$(echo "$TORCH_SPEC $DEPS" | md5sum | cut -c1-8)"
if [ ! -f "$stamp" ]; then
  echo "cuda-check: venv $VENV with $TORCH_SPEC"
  test -x "$VENV/bin/python" || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC" $DEPS
  "$VENV/bin/python" -m pip install -q --no-deps torchattacks==3.5.1
  touch "$stamp"
fi
"$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.version.cuda else \
  'cuda-check: $TORCH_SPEC is not a CUDA build of torch')"
t1=$(date +%s)
echo "cuda-check: building advx against $("$VENV/bin/python" -c 'import torch; print(torch.__version__)') ($((t1 - t0)) s so far)"
# Its own build directory: the editable CPU build keeps build/<wheel tag>.
"$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps -C build-dir=build/cuda-check .
t2=$(date +%s)
echo "cuda-check: built in $((t2 - t1)) s"
# Run from outside the tree so `import advx` is the installed CUDA build.
PY="$(cd "$VENV" && pwd)/bin/python"
(cd "${TMPDIR:-/tmp}" && "$PY" "$OLDPWD/tools/check_cuda_build.py")
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests
echo "cuda-check: done in $(( $(date +%s) - t0 )) s"
