#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite: the unit and MPI tests (1, 2, 4 ranks, the
# PyTorch reference) under the address and undefined-behaviour sanitizers (preset asan), and
# the end-to-end runs of the optimised binary read back with h5py, the fuzzers' saved inputs
# (preset default). Arguments go to ctest on the default preset instead (e.g. -R py_test_sweep).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
if [ $# -gt 0 ]; then
  build_moesim
  exec ctest --preset "$PRESET" "$@"
fi
NATIVE='^(unit|mpi_np[124]|torch_reference_generate)$'
cmake --preset asan >/dev/null && cmake --build --preset asan -j "$JOBS" --target unit_tests mpi_tests
cmake --preset default >/dev/null && cmake --build --preset default -j "$JOBS" --target end_to_end
# The GPU path's code (src/device: kernels, cuBLAS experts, NCCL exchange) compiled with CUDA
# wherever nvcc is found: no GPU runs it here, but every change keeps it building.
if command -v nvcc >/dev/null; then
  cmake --preset cuda >/dev/null && cmake --build --preset cuda -j "$JOBS" --target moesim_device
else
  echo "test.sh: no nvcc on PATH: the GPU path is not compiled"
fi
status=0
# Most tests wait (process start-up, MPI, file I/O): two at a time fill the two cores
# (default preset: 579 -> 326 s here).
ctest --preset asan -j "$JOBS" -R "$NATIVE" || status=1
ctest --preset default -j "$JOBS" -E "$NATIVE" || status=1
exit $status
