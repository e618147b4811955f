#!/usr/bin/env bash
# GPU acceptance check (docs/benchmarks.md, "GPU acceptance"): benchmarks/gpu_check.py, which
# prints its plan, runs the gpu-marked tests, bench, training with NVML and gpu_slots within a
# budget (under 5 minutes on one H100). On a machine without CUDA the same steps run as a CPU
# smoke test, marked skipped.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--budget-s SECONDS]
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
exec "$PYTHON" benchmarks/gpu_check.py "$@"
