#!/usr/bin/env bash
# One command for the GPU machine (no network; torch in the image's python3):
#
#   tools/gpu_check.sh OUTDIR [STAGE ...]
#
# Stages, in this order (default: all of them):
#   wheels    pip-install the wheels carried in ./wheels (e.g. torchattacks), offline
#   build     non-editable install of advx into python3 (ADVX_CUDA=ON), then its
#             build_info(), the GPU, nvcc and compute-sanitizer versions
#   tests     the whole pytest suite, CUDA included, junit XML into OUTDIR
#   sanitize  tools/cuda_sanitize_driver.py under compute-sanitizer memcheck,
#             racecheck, synccheck and initcheck (each its own timeout)
#   bench     benchmarks/bench_{ops,optim,edge,attacks}.py --device cuda, then
#             bench_eval.py --device cuda --resnet (the evaluation against torchattacks)
# Each step has its own timeout; a failing step does not stop the later ones. A stage
# list without `build` still builds when python3 cannot import a CUDA build of advx
# (so `tools/gpu_check.sh OUT sanitize bench` works on a fresh machine too).
#
# OUTDIR gets at most 8 files: gpu_check.log (every step's output, the summary at the
# end), junit.xml, the benchmarks' JSON files and benchmarks.md (their markdown tables,
# one section per file, named as the file it came from). The summary is also printed.
#
# Environment:
#   GPU_CHECK_BUDGET_S   whole-run budget in seconds (default 1140); a step gets at most
#                        what is left, a step that would get < 30 s is skipped (and fails)
#   TORCH_CUDA_ARCH_LIST archs to build (default 9.0: the H100/H200)
#   GPU_CHECK_PYTEST_ARGS extra pytest arguments (e.g. "-k cuda")
#   GPU_CHECK_PYTEST_WORKERS pytest-xdist workers for the suite (default 4, 0: none);
#                        each worker gets nproc/workers CPU threads
#   GPU_CHECK_SANITIZER_ARGS extra compute-sanitizer arguments (e.g. a kernel filter)
#   GPU_CHECK_BENCH_OPS_ARGS bench_ops.py arguments (default "--only pgd --only apgd
#                        --only random": its edge and optim groups are what bench_edge.py
#                        and bench_optim.py run)
# Exit status: 0 when every step passed, 1 when one failed, timed out or was skipped
# for time, 2 when there is no GPU (nothing is run).
set -uo pipefail

PY=${PYTHON:-python3}
if [ $# -lt 1 ] || [ "${1:0:1}" = "-" ]; then
  echo "usage: tools/gpu_check.sh OUTDIR [wheels|build|tests|sanitize|bench ...]" >&2
  exit 2
fi

# 1. No GPU: one clear line, nothing else (also when python3 has no torch at all).
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  if "$PY" -c 'import torch' >/dev/null 2>&1; then
    echo "gpu_check: no CUDA GPU visible to $PY's torch: nothing checked (run this on the GPU machine)"
  else
    echo "gpu_check: $PY has no torch: nothing checked (run this on the GPU machine, whose python3 has a CUDA torch)"
  fi
  exit 2
fi

OUT=$(mkdir -p "$1" && cd "$1" && pwd) || { echo "gpu_check: cannot create $1" >&2; exit 2; }
shift
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(wheels build tests sanitize bench)
for s in "${STAGES[@]}"; do
  case $s in wheels|build|tests|sanitize|bench) ;; *) echo "gpu_check: unknown stage '$s'" >&2; exit 2;; esac
done
cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
LOG=$OUT/gpu_check.log
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
: >"$LOG"

START=$(date +%s)
DEADLINE=$((START + ${GPU_CHECK_BUDGET_S:-1140}))
SUMMARY=()
FAILED=0

want() {  # is stage $1 requested?
  local s
  for s in "${STAGES[@]}"; do [ "$s" = "$1" ] && return 0; done
  return 1
}

note() { echo "gpu_check: $*" | tee -a "$LOG"; }

record() {  # record NAME STATUS SECONDS
  SUMMARY+=("$(printf '%-22s %-28s %5ss' "$1" "$2" "$3")")
  case $2 in PASS*|SKIP\ *) ;; *) FAILED=1 ;; esac
  printf 'gpu_check: %-22s %-28s %5ss\n' "$1" "$2" "$3"
}

# step NAME TIMEOUT_S CMD...: runs CMD under `timeout`, output appended to the log.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - $(date +%s)))
  if [ "$left" -lt 30 ]; then
    echo "===== $name: SKIPPED, the time budget is spent" >>"$LOG"
    record "$name" "SKIPPED (time budget spent)" 0
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  {
    echo
    echo "===== $name (timeout ${limit}s, $(date -u +%H:%M:%S) UTC)"
    echo "\$ $*"
  } >>"$LOG"
  local t0 rc dt
  t0=$(date +%s)
  timeout --kill-after=15 "$limit" "$@" 2>&1 </dev/null | tee -a "$LOG" >"$WORK/step.out"
  rc=${PIPESTATUS[0]}
  dt=$(($(date +%s) - t0))
  echo "===== $name: exit $rc after ${dt}s" >>"$LOG"
  if [ "$rc" -eq 0 ]; then
    record "$name" PASS "$dt"
    return 0
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    record "$name" "TIMEOUT (${limit}s)" "$dt"
  else
    record "$name" "FAIL (exit $rc)" "$dt"
  fi
  tail -n 25 "$WORK/step.out" | sed 's/^/    | /'  # the end of its output, here too
  return "$rc"
}

# From a directory without the source tree on sys.path: the installed advx is imported.
advx_cuda_importable() {
  (cd /tmp && "$PY" -c 'import advx, sys; sys.exit(0 if advx.build_info()["cuda"] else 1)') >/dev/null 2>&1
}

note "$(date -u '+%Y-%m-%d %H:%M:%S') UTC, stages: ${STAGES[*]}, budget ${GPU_CHECK_BUDGET_S:-1140}s, repo $REPO"

# 2. Wheels carried with the working tree (the machine cannot download anything).
if want wheels; then
  shopt -s nullglob
  WHEELS=(wheels/*.whl)
  shopt -u nullglob
  if [ ${#WHEELS[@]} -eq 0 ]; then
    record wheels "SKIP (no wheels/*.whl)" 0
  else
    step wheels 120 "$PY" -m pip install --no-deps --no-index "${WHEELS[@]}"
  fi
fi

# 3. Build advx into python3 (not editable: the installed copy is what is tested).
if want build || ! advx_cuda_importable; then
  step build 600 env ADVX_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
    "$PY" -m pip install --no-build-isolation --no-deps --no-index .
  step build-info 120 bash -c '
    cd /tmp && "$0" -c "
import torch, advx
info = advx.build_info()
print(\"advx\", advx.__version__, \"from\", advx.__file__)
print(\"build_info\", info)
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"gpu\", torch.cuda.get_device_name())
assert info[\"cuda\"], \"advx was built without CUDA kernels\"
"
    rc=$?
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    nvcc --version | tail -2 || true
    compute-sanitizer --version | head -2 || true
    exit $rc' "$PY"
fi

# 4. The whole suite, CUDA included; no -x: every failure is listed.
if want tests; then
  PYTEST_EXTRA=()  # pytest-timeout and pytest-xdist are in the image
  "$PY" -c 'import pytest_timeout' >/dev/null 2>&1 && PYTEST_EXTRA+=(--timeout=600)
  WORKERS=${GPU_CHECK_PYTEST_WORKERS:-4}
  THREADS=$(nproc)
  if [ "$WORKERS" -gt 0 ] && "$PY" -c 'import xdist' >/dev/null 2>&1; then
    PYTEST_EXTRA+=(-n "$WORKERS")
    THREADS=$(( $(nproc) / WORKERS > 0 ? $(nproc) / WORKERS : 1 ))
  fi
  # shellcheck disable=SC2086
  step tests 900 env OMP_NUM_THREADS="$THREADS" "$PY" -m pytest -q -p no:cacheprovider "${PYTEST_EXTRA[@]}" \
    tests --junitxml="$OUT/junit.xml" -o junit_family=xunit2 ${GPU_CHECK_PYTEST_ARGS:-}
fi

# 5. compute-sanitizer over one call of every kernel instantiation.
if want sanitize; then
  SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
  if [ -z "$SAN" ]; then
    note "compute-sanitizer not found: sanitizer steps not run"
    record sanitize "FAIL (no compute-sanitizer)" 0
  else
    step sanitize-driver 120 "$PY" tools/cuda_sanitize_driver.py  # without the sanitizer: the calls themselves work
    for tool in memcheck racecheck synccheck initcheck; do
      extra=()
      [ "$tool" = memcheck ] && extra=(--big)  # the 21M-element chunk-table rollover, once
      # shellcheck disable=SC2086
      step "sanitize-$tool" 240 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool "$tool" \
        --error-exitcode 1 --print-limit 50 ${GPU_CHECK_SANITIZER_ARGS:-} \
        "$PY" tools/cuda_sanitize_driver.py "${extra[@]}"
    done
  fi
fi

# 6. Benchmarks: results into a scratch folder, then JSON and one markdown file to OUTDIR.
if want bench; then
  BENCH=$WORK/bench
  mkdir -p "$BENCH"
  # shellcheck disable=SC2086
  step bench-ops 300 "$PY" benchmarks/bench_ops.py --device cuda ${GPU_CHECK_BENCH_OPS_ARGS:---only pgd --only apgd --only random} --out "$BENCH"
  step bench-optim 300 "$PY" benchmarks/bench_optim.py --device cuda --out "$BENCH"
  # bench_edge.py has no output flag: it writes benchmarks/results/edge_energy_cuda.{json,md}
  if step bench-edge 300 "$PY" benchmarks/bench_edge.py --device cuda; then
    cp benchmarks/results/edge_energy_cuda.json benchmarks/results/edge_energy_cuda.md "$BENCH"/ 2>>"$LOG"
  fi
  step bench-attacks 420 "$PY" benchmarks/bench_attacks.py --device cuda --out "$BENCH"
  step bench-eval 480 "$PY" benchmarks/bench_eval.py --device cuda --resnet --out "$BENCH"
  shopt -s nullglob
  for f in "$BENCH"/*.json; do cp "$f" "$OUT"/; done
  MDS=("$BENCH"/*.md)
  shopt -u nullglob
  if [ ${#MDS[@]} -gt 0 ]; then
    for f in "${MDS[@]}"; do  # a header line per file: DEVELOPERS.md splits them again
      printf '<!-- benchmarks/results/%s -->\n' "$(basename "$f")"
      cat "$f"
      [ -n "$(tail -c 1 "$f")" ] && echo
    done >"$OUT/benchmarks.md"
  fi
fi

# Summary: in the log and on stdout.
{
  echo
  echo "===== summary ($(($(date +%s) - START))s in all)"
  printf '%s\n' "${SUMMARY[@]}"
  echo "files in $OUT: $(cd "$OUT" && find . -type f | sed 's|^\./||' | sort | tr '\n' ' ')"
} >>"$LOG"
echo
echo "gpu_check summary ($(($(date +%s) - START))s in all):"
printf '  %s\n' "${SUMMARY[@]}"
NFILES=$(find "$OUT" -type f | wc -l)
echo "  $NFILES file(s) in $OUT$([ "$NFILES" -gt 8 ] && echo ': MORE THAN 8, some will not come back')"
if [ $FAILED -ne 0 ]; then
  echo "gpu_check: FAILED (see $LOG)"
  exit 1
fi
echo "gpu_check: all steps passed"
exit 0
