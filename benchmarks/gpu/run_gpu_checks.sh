#!/usr/bin/env bash
# GPU checks of the fused log-prob + entropy op, for one H100/H200 with a CUDA torch (and ideally triton):
#   1. the gpu-marked tests of tests/ops/test_logprob_entropy.py (Triton/compiled/eager vs float64),
#   2. benchmarks/bench_logprob_entropy.py (naive vs fused, T=4096; bf16 bandwidth at T=65536, V_local=18992),
#   3. benchmarks/gpu/sweep_triton_configs.py (kernel-only time of each Triton config; informational).
# Budget: under 4 minutes. Results (JSON + logs) go to benchmarks/results/ and, if $OUT is set, are copied there.
#
#   bash benchmarks/gpu/run_gpu_checks.sh            # from anywhere; PYTHON=... to pick the interpreter
#
# The benchmark runs even when a test fails; the script then exits non-zero.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
PY="${PYTHON:-python3}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export TRITON_PRINT_AUTOTUNING="${TRITON_PRINT_AUTOTUNING:-1}"
RESULTS="$REPO/benchmarks/results"
mkdir -p "$RESULTS"

echo "== environment"
nvidia-smi || echo "nvidia-smi not available"
"$PY" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
try:
    import triton
    print("triton", triton.__version__)
except Exception as exc:  # reported, then installed below
    print("triton missing:", exc)
EOF
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible: nothing to check" >&2
    exit 2
fi
if ! "$PY" -c "import triton" 2>/dev/null; then
    echo "== installing triton"
    "$PY" -m pip install -q triton
fi
"$PY" -c "import pytest" 2>/dev/null || "$PY" -m pip install -q pytest

status=0
echo "== gpu tests"
# -o addopts="": a missing pytest-timeout plugin must not break the run. Tests use the fixed Triton config (no
# autotuning: fewer kernel compiles); the benchmark autotunes.
if ! SLIME_ENTROPY_TRITON_AUTOTUNE=0 timeout 170 "$PY" -m pytest -q -m gpu tests/ops/test_logprob_entropy.py -p no:cacheprovider -rs \
        -o addopts="" --strict-markers 2>&1 | tee "$RESULTS/gpu_tests.log"; then
    status=1
fi

echo "== benchmark"
if ! timeout 200 "$PY" benchmarks/bench_logprob_entropy.py --reps 10 2>&1 | tee "$RESULTS/gpu_bench.log"; then
    status=1
fi

echo "== kernel config sweep (informational)"
if ! timeout 90 "$PY" benchmarks/gpu/sweep_triton_configs.py 2>&1 | tee "$RESULTS/gpu_sweep.log"; then
    echo "sweep failed (not fatal)"
fi

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp "$RESULTS"/gpu_tests.log "$RESULTS"/gpu_bench.log "$RESULTS"/gpu_sweep.log "$OUT"/ 2>/dev/null || true
    cp "$RESULTS"/logprob_entropy_cuda-*.json "$OUT"/ 2>/dev/null || true
fi
echo "== done (status $status)"
exit "$status"
