#!/usr/bin/env bash
# GPU check and benchmark of the bank's training path (issue 14); see benchmarks/gpu.py.
#   benchmarks/gpu.sh [OUT_DIR]        default OUT_DIR: runs/gpu-check
# On a CUDA machine: per-example gradient checks (fp32, bf16, 4-bit), dp_step plain/ours/Opacus
# on SmolLM2 and a random-weight ~1.1B Llama (bf16, with and without a 4-bit base), and a short
# `fedlora simulate`; under 8 minutes on one H200. Without a GPU it says "no CUDA GPU found"
# and runs the CPU smoke stages. Exit status 1 when any stage failed, timed out or was skipped.
# PYTHON (default: .venv/bin/python, else python3) must have fedlora's deps with a CUDA torch;
# FEDLORA_GPU_DEADLINE (default 450 s) is the stages' overall limit, and `timeout` kills the
# whole script 30 s after it in any case.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
deadline=${FEDLORA_GPU_DEADLINE:-450}
exec timeout -k 5 $((deadline + 30)) "$PYTHON" benchmarks/gpu.py --out "${1:-runs/gpu-check}" --deadline "$deadline"
