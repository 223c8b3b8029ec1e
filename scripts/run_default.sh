#!/usr/bin/env bash
# Sets up, builds and runs the built-in default job: an MoE training run on 4 local
# MPI ranks (experiments/default.ini) that writes an HDF5 run file and a summary.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$ROOT/scripts/setup.sh"
build_moesim --target moesim
OUT="${1:-$ROOT/runs/default/default.h5}"
"${MPIRUN[@]}" -np 4 "$BUILD_DIR/src/moesim" moe --config "$ROOT/experiments/default.ini" --out "$OUT"
