# Sourced by the scripts in this folder: repository root, build and mpirun helpers.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PRESET="${MOESIM_PRESET:-default}"
BUILD_DIR="$ROOT/build/$PRESET"
JOBS="${MOESIM_JOBS:-$(nproc)}"
# Ranks of the default job: one per core, 2 to 4 (MOESIM_RANKS overrides). With more ranks than
# cores its exchange seconds are the operating system's time slicing, not the exchange (on 2
# cores, 4 ranks: 31% of a step in exchanges, 2 ranks: 9-11%, the same results to the bit).
DEFAULT_RANKS="${MOESIM_RANKS:-$(n=$(nproc); echo $((n < 2 ? 2 : (n > 4 ? 4 : n))))}"

# mpirun for local runs: allow more ranks than cores, and root (containers, CI).
MPIRUN=(mpirun --oversubscribe)
if [ "$(id -u)" -eq 0 ]; then MPIRUN+=(--allow-run-as-root); fi

# build_moesim [cmake --build arguments, e.g. --target moesim]
build_moesim() {
  (cd "$ROOT" && cmake --preset "$PRESET" >/dev/null && cmake --build --preset "$PRESET" -j "$JOBS" "$@")
}

# Debian's interpreter has the analysis packages (h5py, pandas, matplotlib, ...).
PYTHON=/usr/bin/python3
