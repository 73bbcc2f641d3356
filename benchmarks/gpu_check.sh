#!/usr/bin/env bash
# Everything that needs a GPU, in one call: the GPU tests, then the GPU benchmarks.
#   benchmarks/gpu_check.sh OUT_DIR [benchmark args...]
# Writes gpu_tests.log, attention_gpu.json/.log and environment.txt to OUT_DIR. Needs torch and triton
# (the benchmarks and kernel tests do not need diffusers; the training throughput benchmark does, and is
# skipped without it). Commit the JSON under benchmarks/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
shift || true
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 VMOBA_TEST_GPU=1
unset TRITON_INTERPRET

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

timeout 150 python3 -m pytest -q tests/test_kernels.py -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
python3 benchmarks/attention_gpu.py --out "$OUT" "$@" 2>&1 | tee "$OUT/attention_gpu.log" | grep -v "^\[" | tail -60
if python3 -c "import diffusers" 2>/dev/null; then
    timeout 600 python3 benchmarks/training_cpu.py --device cuda --out "$OUT" 2>&1 | tee "$OUT/training_gpu.log" | tail -12
fi
