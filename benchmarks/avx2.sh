#!/usr/bin/env bash
# Run a command as on a CPU without AVX-512: PyTorch's own kernels, MKL and oneDNN limited to AVX2.
#
#   benchmarks/avx2.sh .venv/bin/fedlora simulate
#
# An emulation on an AVX-512 machine (same cores, clock and memory): it shows what the missing
# vector width costs, not what an older CPU's cache and clock cost. The variables are PyTorch's
# (ATEN_CPU_CAPABILITY), Intel MKL's (MKL_ENABLE_INSTRUCTIONS) and oneDNN's (ONEDNN_MAX_CPU_ISA).
set -euo pipefail
export ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
"$(dirname "$0")/../.venv/bin/python" -c 'import torch; print("torch CPU capability:", torch.backends.cpu.get_cpu_capability())' >&2
exec "$@"
