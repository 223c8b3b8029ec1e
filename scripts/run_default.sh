#!/usr/bin/env bash
# Sets up, builds and runs the built-in default job: the quick scaling sweep
# (experiments/quick.sweep.ini) on one local MPI rank per core (2 to 4; MOESIM_RANKS overrides),
# one HDF5 run file per point and a
# summary in runs/quick/, then its report in runs/quick/report/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$ROOT/scripts/setup.sh"
build_moesim --target moesim
OUT="${1:-$ROOT/runs/quick}"
"${MPIRUN[@]}" -np "$DEFAULT_RANKS" "$BUILD_DIR/src/moesim" sweep "$ROOT/experiments/quick.sweep.ini" --out "$OUT"
cd "$ROOT" && "$PYTHON" -m moesim_analysis report "$OUT"
echo "report: $OUT/report/index.html"
