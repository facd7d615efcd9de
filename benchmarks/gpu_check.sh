#!/usr/bin/env bash
# Check a GPU with the paper's set-up: training speed and memory, grid speed and the UNet's
# FLOPs (see benchmarks/gpu_check.py). Sized, by an estimate from FLOP
# counts that no GPU run has confirmed, to finish within 5 minutes on one H200-class GPU.
# Usage: benchmarks/gpu_check.sh [--smoke] [--compile] [--peak-tflops N] [--lpips-weights FILE] [--out FILE]
# PYTHON selects the interpreter (default: the checkout's .venv, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" -m benchmarks.gpu_check "$@"
