#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite (unit, MPI on 1/2/4 ranks, PyTorch
# reference, end-to-end runs read back with h5py).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$ROOT/scripts/setup.sh"
build_moesim
cd "$ROOT" && ctest --preset "$PRESET" "$@"
