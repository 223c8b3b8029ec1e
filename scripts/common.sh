# Sourced by the scripts in this folder: repository root, build and mpirun helpers.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PRESET="${MOESIM_PRESET:-default}"
BUILD_DIR="$ROOT/build/$PRESET"
JOBS="${MOESIM_JOBS:-$(nproc)}"

# mpirun for local runs: allow more ranks than cores, and root (containers, CI).
MPIRUN=(mpirun --oversubscribe)
if [ "$(id -u)" -eq 0 ]; then MPIRUN+=(--allow-run-as-root); fi

# build_moesim [cmake --build arguments, e.g. --target moesim]
build_moesim() {
  (cd "$ROOT" && cmake --preset "$PRESET" >/dev/null && cmake --build --preset "$PRESET" -j "$JOBS" "$@")
}

# Debian's interpreter has the analysis packages (h5py, pandas, matplotlib, ...).
PYTHON=/usr/bin/python3
