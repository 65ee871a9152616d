#!/usr/bin/env bash
# Compile-only check of every CUDA source under csrc/ for sm_80 and sm_90, against the
# headers of the torch installed in the given Python (a CPU build is fine: no GPU and
# no CUDA torch needed). Skips, saying so, when nvcc is absent. A .cu that does not
# compile fails the check (and `make test`).
set -euo pipefail
PY=${1:-python3}
cd "$(dirname "$0")/.."

NVCC=${NVCC:-$(command -v nvcc || true)}
if [ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ]; then NVCC=/usr/local/cuda/bin/nvcc; fi
if [ -z "$NVCC" ]; then
  echo "cuda-check: nvcc not found, CUDA sources NOT compile-checked (skipped)"
  exit 0
fi
mapfile -t SOURCES < <(find csrc -name '*.cu' | sort)
if [ ${#SOURCES[@]} -eq 0 ]; then echo "cuda-check: no .cu files"; exit 0; fi

read -r TORCH_INC PY_INC < <("$PY" -c "
import sysconfig, torch.utils.cpp_extension as ce
print(':'.join(ce.include_paths()), sysconfig.get_paths()['include'])")
INCLUDES=(-I csrc -I "$PY_INC")
IFS=: read -ra TI <<< "$TORCH_INC"
for d in "${TI[@]}"; do INCLUDES+=(-I "$d"); done

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
FLAGS=(-c -std=c++17 -O2 --expt-relaxed-constexpr -Xcompiler -fPIC
  -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE -DTORCH_EXTENSION_NAME=_C
  -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
  -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90)

echo "cuda-check: $("$NVCC" --version | tail -1), ${#SOURCES[@]} file(s), sm_80 + sm_90"
status=0
for src in "${SOURCES[@]}"; do
  start=$(date +%s)
  if "$NVCC" "${FLAGS[@]}" "${INCLUDES[@]}" "$src" -o "$OUT/$(basename "$src").o" 2> "$OUT/log"; then
    echo "  ok   $src ($(( $(date +%s) - start )) s)"
  else
    echo "  FAIL $src"; grep -E -A3 "error" "$OUT/log" | cut -c1-400 | head -60; status=1
  fi
done
exit $status
