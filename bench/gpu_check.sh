#!/usr/bin/env bash
# The GPU path's check, for a machine with GPUs, CUDA, NCCL and moesim's build dependencies
# (scripts/setup.sh installs them where apt works); about 5 minutes on 16 cores and one GPU:
#   1. builds moesim, the GPU tests and bench_gpu with CUDA (build/gpu);
#   2. runs the GPU tests: the expert FFN engine, each kernel and the NCCL exchange against
#      the CPU path (tests/gpu/test_gpu_path.cpp);
#   3. trains the default model 50 steps on 2 ranks on the CPU and with --device cuda (and
#      --dispatch nccl where there are 2 GPUs), and 25 steps on one device resumed on the other
#      from the checkpoint, and compares every step's losses: each must stay within a relative
#      1e-3 of the CPU run (fp32 products summed in another order);
#   4. prints bench_gpu's table: the MoE layer against cuBLAS at the same FLOPs, the NCCL
#      dispatch against NCCL's own all-to-all.
#   bench/gpu_check.sh [LOG_DIR]     (everything printed is also written to LOG_DIR/gpu_check.log)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
LOG_DIR="${1:-$ROOT/runs/gpu_check}"
mkdir -p "$LOG_DIR"
exec > >(tee "$LOG_DIR/gpu_check.log") 2>&1
BUILD="$ROOT/build/gpu"
# The interpreter with h5py and numpy: Debian's where it has them, else the first on PATH.
PY="$PYTHON"
"$PY" -c "import h5py, numpy" 2>/dev/null || PY="$(command -v python3)"
date -u
nvidia-smi -L || true
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
[ "$GPUS" -ge 1 ] || { echo "gpu_check: no GPU answers (nvidia-smi -L lists none)"; exit 2; }

echo "== 1. build"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DMOESIM_CUDA=ON -DMOESIM_ENABLE_BENCHMARKS=OFF \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DMOESIM_PYTHON="$PY" >/dev/null
cmake --build "$BUILD" -j "$JOBS" --target moesim gpu_tests bench_gpu
"$BUILD/src/moesim" info

echo "== 2. GPU tests"
"${MPIRUN[@]}" -np 1 "$BUILD/tests/gpu_tests"
if [ "$GPUS" -ge 2 ]; then "${MPIRUN[@]}" -np 2 "$BUILD/tests/gpu_tests" --gtest_filter='GpuNccl*'; fi

echo "== 3. 50 steps of the default model, CPU and GPU"
RUNS="$LOG_DIR/runs"
rm -rf "$RUNS" && mkdir -p "$RUNS"
"${MPIRUN[@]}" -np 2 "$BUILD/src/moesim" moe --steps 50 --out "$RUNS/cpu.h5" >/dev/null
"${MPIRUN[@]}" -np 2 "$BUILD/src/moesim" moe --steps 50 --device cuda --out "$RUNS/cuda.h5" >/dev/null
# A checkpoint moves between devices: 25 steps on the GPU, the rest on the CPU, and back.
"${MPIRUN[@]}" -np 2 "$BUILD/src/moesim" moe --steps 25 --device cuda --checkpoint "$RUNS/g.ckpt.h5" --out "$RUNS/gpu_then_cpu.h5" >/dev/null
"${MPIRUN[@]}" -np 2 "$BUILD/src/moesim" moe --steps 50 --checkpoint "$RUNS/g.ckpt.h5" --resume --out "$RUNS/gpu_then_cpu.h5" >/dev/null
"${MPIRUN[@]}" -np 2 "$BUILD/src/moesim" moe --steps 25 --checkpoint "$RUNS/c.ckpt.h5" --out "$RUNS/cpu_then_gpu.h5" >/dev/null
"${MPIRUN[@]}" -np 2 "$BUILD/src/moesim" moe --steps 50 --device cuda --checkpoint "$RUNS/c.ckpt.h5" --resume --out "$RUNS/cpu_then_gpu.h5" >/dev/null
COMPARE=("$RUNS/cuda.h5" "$RUNS/gpu_then_cpu.h5" "$RUNS/cpu_then_gpu.h5")
if [ "$GPUS" -ge 2 ]; then
  "${MPIRUN[@]}" -np 2 "$BUILD/src/moesim" moe --steps 50 --device cuda --dispatch nccl --out "$RUNS/nccl.h5" >/dev/null
  COMPARE+=("$RUNS/nccl.h5")
fi
"$PY" - "$RUNS/cpu.h5" "${COMPARE[@]}" <<'PYEOF'
import sys
import h5py
import numpy as np
TOL = 1e-3
cpu = h5py.File(sys.argv[1], "r")
ok = True
for path in sys.argv[2:]:
    gpu = h5py.File(path, "r")
    for name in ("train_loss", "task_loss"):
        if name not in cpu["metrics"]:
            continue
        a, b = cpu["metrics"][name][()], gpu["metrics"][name][()]
        rel = np.abs(b - a) / np.maximum(np.abs(a), 1e-12)
        worst = int(np.argmax(rel))
        good = a.shape == b.shape and rel.max() <= TOL
        ok &= good
        print(f"{path}: {name} over {len(a)} steps: largest relative difference {rel.max():.2e} at step {worst} "
              f"(CPU {a[worst]:.6f}, GPU {b[worst]:.6f}): {'within' if good else 'OVER'} {TOL:g}")
    print(f"{path}: final val_loss CPU {cpu['final'].attrs.get('val_loss')} GPU {gpu['final'].attrs.get('val_loss')}")
sys.exit(0 if ok else 1)
PYEOF

echo "== 4. bench_gpu"
P=1
if [ "$GPUS" -ge 2 ]; then P=2; fi
"${MPIRUN[@]}" -np "$P" "$BUILD/bench/bench_gpu" --iters 20 --warmup 3
date -u
