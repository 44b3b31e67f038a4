#!/usr/bin/env bash
# The GPU check of issue 16: one script, under 5 minutes on one GPU, printing the CUDA table
# (ours vs MONAI, AMP on/off, share of time outside the model, prefetch on/off, aggregation on
# the GPU vs the CPU, training-loop throughput). Run from the repository root:
#     bash benchmarks/gpu_check.sh            # GPU settings (256³); CPU too, but slowly
#     bash benchmarks/gpu_check.sh --quick    # CI-size, any device (the test suite runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
"$PYTHON" -c "import torch; print('CUDA available:', torch.cuda.is_available())"
"$PYTHON" benchmarks/bench_gpu.py "$@"
