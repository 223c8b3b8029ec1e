#!/usr/bin/env bash
# Submits a sweep as a Slurm job array, one array task per grid point that is not complete yet,
# and a one-rank job that rebuilds OUTDIR/sweep.h5 once every task has ended.
#
#   jobs/submit_sweep.sh CONFIG OUTDIR [sbatch options...]
#   MOESIM_BIN=$PWD/build/default/src/moesim jobs/submit_sweep.sh experiments/quick.sweep.ini \
#       runs/quick --ntasks=4 --time=00:30:00 --partition=short
#
# The grid comes from `moesim sweep CONFIG --out OUTDIR --list` (run here, one rank, no launcher).
# Points already complete are left out of --array, so running this again after a partial sweep
# submits only what is missing; if nothing is, it exits 0 and submits nothing.
# sbatch options are passed to both jobs (the summary job also gets one rank on one node and a
# short time).
#
# Placement of the array tasks: the #SBATCH lines of sweep.sbatch, unless the site variables
# below are set (here or in the environment); each set one becomes an sbatch option placed
# before the options given on the command line, which win.
#   MOESIM_NODES             --nodes=N            nodes per task
#   MOESIM_NTASKS_PER_NODE   --ntasks-per-node=N  MPI ranks per node
#   MOESIM_CPUS_PER_TASK     --cpus-per-task=N    cores per rank (OMP/OpenBLAS threads; the
#                                                 points' blas-threads option is their own)
#   MOESIM_EXCLUSIVE=1       --exclusive          whole nodes
#
# Environment: MOESIM_BIN (default: moesim on PATH, as `cmake --install` puts it, else
# build/default/src/moesim of the checkout this script is in), MOESIM_ENV_FILE (default: env.sh
# next to this script when it exists; sourced here and by the jobs, e.g. `module load ...`),
# MOESIM_ENV (a command line run after it, here and by the jobs), SWEEP_SBATCH (default:
# sweep.sbatch next to this script), SWEEP_ARRAY_LIMIT (optional: at most this many tasks at
# once, --array=...%N), SWEEP_SUMMARY (1, default: submit the summary job; 0: don't).
# Prints: `array job JOBID: N tasks (INDICES)` and `summary job JOBID` (stdout, one per line).

# ---- site settings (each may be overridden from the environment) ------------------------------
MOESIM_NODES=${MOESIM_NODES:-}
MOESIM_NTASKS_PER_NODE=${MOESIM_NTASKS_PER_NODE:-}
MOESIM_CPUS_PER_TASK=${MOESIM_CPUS_PER_TASK:-}
MOESIM_EXCLUSIVE=${MOESIM_EXCLUSIVE:-0}
# -----------------------------------------------------------------------------------------------
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG OUTDIR [sbatch options...]" >&2
  exit 2
fi
CONFIG=$1
OUT=$2
shift 2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The environment hook, as the jobs run it (they get the same file and command line).
MOESIM_ENV_FILE=${MOESIM_ENV_FILE:-$HERE/env.sh}
MOESIM_ENV=${MOESIM_ENV:-}
export MOESIM_ENV_FILE MOESIM_ENV
if [ -f "$MOESIM_ENV_FILE" ]; then
  set +eu
  # shellcheck disable=SC1090
  source "$MOESIM_ENV_FILE" || { echo "submit_sweep: sourcing $MOESIM_ENV_FILE failed" >&2; exit 2; }
  set -eu
fi
if [ -n "$MOESIM_ENV" ]; then
  set +eu
  eval "$MOESIM_ENV" || { echo "submit_sweep: MOESIM_ENV '$MOESIM_ENV' failed" >&2; exit 2; }
  set -eu
fi
if [ -z "${MOESIM_BIN:-}" ]; then
  MOESIM_BIN=$(command -v moesim || echo "$HERE/../build/default/src/moesim")
fi
if ! command -v "$MOESIM_BIN" >/dev/null; then
  echo "submit_sweep: no moesim binary at '$MOESIM_BIN': set MOESIM_BIN, put moesim on PATH" \
       "(cmake --install) or build build/default" >&2
  exit 2
fi
MOESIM_BIN=$(command -v "$MOESIM_BIN")  # a path the jobs can use
SWEEP_SBATCH=${SWEEP_SBATCH:-$HERE/sweep.sbatch}
SWEEP_SUMMARY=${SWEEP_SUMMARY:-1}
export MOESIM_BIN  # the jobs see the submitting environment (sbatch's default --export=ALL)

# `--list`: a header "N points (command C)", then "INDEX  ID  STATUS  key=value..." per point.
listing=$("$MOESIM_BIN" sweep "$CONFIG" --out "$OUT" --list) || {
  echo "submit_sweep: '$MOESIM_BIN sweep $CONFIG --out $OUT --list' failed" >&2
  exit 1
}
total=$(printf '%s\n' "$listing" | awk 'NR == 1 && $2 == "points" { print $1 }')
if [ -z "$total" ]; then
  echo "submit_sweep: unexpected --list output:" >&2
  printf '%s\n' "$listing" >&2
  exit 1
fi
pending=$(printf '%s\n' "$listing" | awk 'NR > 1 && NF >= 3 && $3 != "complete" { print $1 }')
listed=$(printf '%s\n' "$listing" | awk 'NR > 1 && NF >= 3' | wc -l)
if [ "$listed" -ne "$total" ]; then
  echo "submit_sweep: --list announced $total points but listed $listed" >&2
  exit 1
fi
n=$(printf '%s\n' "$pending" | grep -c . || true)
if [ "$n" -eq 0 ]; then
  echo "submit_sweep: all $total points of $CONFIG are complete in $OUT; nothing to submit"
  exit 0
fi

# Compress the indices into ranges: 0,1,2,5 -> 0-2,5.
spec=$(printf '%s\n' "$pending" | awk '
  { if (NR == 1) { lo = hi = $1; next }
    if ($1 == hi + 1) { hi = $1; next }
    out = out (out == "" ? "" : ",") (lo == hi ? lo : lo "-" hi); lo = hi = $1 }
  END { out = out (out == "" ? "" : ",") (lo == hi ? lo : lo "-" hi); print out }')
[ -n "${SWEEP_ARRAY_LIMIT:-}" ] && spec="$spec%$SWEEP_ARRAY_LIMIT"

placement=()
[ -n "$MOESIM_NODES" ] && placement+=(--nodes="$MOESIM_NODES")
[ -n "$MOESIM_NTASKS_PER_NODE" ] && placement+=(--ntasks-per-node="$MOESIM_NTASKS_PER_NODE")
[ -n "$MOESIM_CPUS_PER_TASK" ] && placement+=(--cpus-per-task="$MOESIM_CPUS_PER_TASK")
[ "$MOESIM_EXCLUSIVE" = 1 ] && placement+=(--exclusive)

array_id=$(sbatch --parsable --array="$spec" "${placement[@]}" "$@" "$SWEEP_SBATCH" "$CONFIG" "$OUT")
array_id=${array_id%%;*}
echo "array job $array_id: $n tasks ($spec) of $total points"

if [ "$SWEEP_SUMMARY" = 1 ]; then
  # Later options win: the summary job is one rank on one node, short, and never requeued.
  summary_id=$(sbatch --parsable "$@" --dependency="afterany:$array_id" --nodes=1 --ntasks=1 \
                 --ntasks-per-node=1 --cpus-per-task=1 --time=00:10:00 \
                 --job-name=moesim-sweep-summary --no-requeue \
                 "$SWEEP_SBATCH" "$CONFIG" "$OUT" --summary-only)
  echo "summary job ${summary_id%%;*}"
fi
