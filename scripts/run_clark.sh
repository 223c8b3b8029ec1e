#!/usr/bin/env bash
# Clark et al. (2022) on text: builds moesim, runs the three LM sweeps of experiments/clark_lm*
# (the scaling grid, K = 1 vs 2 at equal compute, routers side by side) on local ranks, then
# writes each one's report and the comparison with the published fits.
#   scripts/run_clark.sh [OUT (default runs/clark)] [RANKS (default 2)]
# About two hours on a 2-core machine; a killed run resumes where it stopped when started again.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$ROOT/scripts/setup.sh"
build_moesim --target moesim
OUT="${1:-$ROOT/runs/clark}"
RANKS="${2:-2}"
start=$(date +%s)
for sweep in clark_lm clark_lm_topk clark_lm_routers; do
  "${MPIRUN[@]}" -np "$RANKS" "$BUILD_DIR/src/moesim" sweep "$ROOT/experiments/$sweep.sweep.ini" \
    --out "$OUT/$sweep"
done
echo "training: $(( $(date +%s) - start )) s on $RANKS ranks"
cd "$ROOT"
for sweep in clark_lm clark_lm_topk clark_lm_routers; do
  "$PYTHON" -m moesim_analysis report "$OUT/$sweep"
done
"$PYTHON" -m moesim_analysis clark "$OUT"
echo "wall: $(( $(date +%s) - start )) s; reports: $OUT/*/report/index.html"
