#!/usr/bin/env bash
# The GPU checks in one run, on a machine with CuPy, PyTorch and a CUDA GPU (run from the repository root):
#   1. every CuPy test: the op-level cases (the `backend` fixture) and tests/test_gpu.py (whole models);
#   2. benchmarks/bench_gpu.py: the GPT on CuPy against PyTorch on CUDA (baby and small presets);
#   3. `groundup train gpt --device cuda`: the Trainer end to end on Tiny Shakespeare, a short run.
# OUT (default: gpu-out) receives the logs and the JSON record. Each part has its own time limit.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi -L 2>&1 | tee "$OUT/machine.txt"
$PY -c "import cupy, numpy, torch; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'torch',
torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$OUT/machine.txt"

echo "== 1. CuPy tests"
timeout "${TEST_LIMIT:-240}" $PY -m pytest -q -m gpu -n "${WORKERS:-8}" -p no:cacheprovider \
    tests/test_gpu.py tests/test_ops.py tests/test_functional.py tests/test_tensor.py 2>&1 | tee "$OUT/tests.log" \
    | tail -40
echo "tests exit: ${PIPESTATUS[0]}"

echo "== 2. bench_gpu"
timeout "${BENCH_LIMIT:-200}" $PY benchmarks/bench_gpu.py --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench.log" \
    | tail -30
echo "bench exit: ${PIPESTATUS[0]}"

echo "== 3. groundup train --device cuda"
timeout "${TRAIN_LIMIT:-120}" $PY -m groundup.cli train gpt --preset small --device cuda --max-iters 100 \
    --train.eval_interval 50 --train.eval_iters 20 --no-progress --out /tmp/gpu-run --replace 2>&1 \
    | tee "$OUT/train.log" | tail -20
echo "train exit: ${PIPESTATUS[0]}"
cp /tmp/gpu-run/summary.json "$OUT/train_summary.json" 2>/dev/null || true
