#!/usr/bin/env bash
# GPU acceptance check (docs/benchmarks.md, "GPU acceptance"): the gpu-marked tests, then
# benchmarks/gpu_check.py (bench, training with NVML, gpu_slots). Under 8 minutes on one H100;
# on a machine without CUDA the same steps run as a CPU smoke test, marked skipped.
#
#   bash benchmarks/gpu_check.sh [--out DIR]
#
# PYTHON picks the interpreter (default: .venv/bin/python where it exists, else python3); the
# checkout is put on PYTHONPATH, so an environment holding the dependencies is enough.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not found (no NVIDIA driver here)"

echo "== gpu-marked tests"
"$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_bench.py tests/test_train.py || status=$?
# 5: nothing was selected or everything skipped is fine on a CPU; any failure is not.
if [ "${status:-0}" -ne 0 ] && [ "${status:-0}" -ne 5 ]; then exit "$status"; fi

echo "== bench, training with NVML, gpu_slots"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
