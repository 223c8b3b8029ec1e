#!/usr/bin/env bash
# Fuzzes moesim's parsers with libFuzzer (clang; address and undefined-behaviour sanitizers
# over the whole library): fuzz_config (the --config files of moe, stack and blend, with
# their option checks), fuzz_sweep_grid (sweep configs and their grids), fuzz_csv (the CSV
# reader). Sources and seeds in fuzz/.
#   scripts/fuzz.sh [SECONDS per target (default 60)] [TARGET ... (default all three)]
# One target at a time, each from its seeds (fuzz/corpus/<target>/), its saved crashes
# (fuzz/regressions/<target>/, checked first) and what earlier runs found
# (build/fuzz/corpus/<target>/, kept out of the repository). A crash, sanitizer report,
# escaping exception, timeout (> 10 s per input) or memory blow-up (> 2 GiB) stops that
# target; its input is minimised into fuzz/regressions/<target>/, which the test suite
# replays (ctest -R fuzz_replay). Exit status 1 when any target found something.
set -euo pipefail
export MOESIM_PRESET=fuzz
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$ROOT/scripts/setup.sh"

# clang and libFuzzer's runtime (not needed by the normal build). Version 16: clang 14 and 15
# cannot capture structured bindings in lambdas (C++20), which the library does.
missing=()
for p in clang-16 libclang-rt-16-dev; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then missing+=("$p"); fi
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "fuzz: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

SECONDS_PER_TARGET="${1:-60}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then TARGETS=(config sweep_grid csv); fi
build_moesim $(printf -- '--target fuzz_%s ' "${TARGETS[@]}")

# Leaks: MPI_Init's allocations outlive every input; leaks inside an input are still checked.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"
symbolizer=$(command -v llvm-symbolizer-16 || command -v llvm-symbolizer || true)
if [ -n "$symbolizer" ]; then export ASAN_SYMBOLIZER_PATH="$symbolizer"; fi  # stacks with file:line
OUT="$BUILD_DIR/fuzz-runs/$(date +%Y%m%d-%H%M%S)"
status=0
summary=()
for t in "${TARGETS[@]}"; do
  exe="$BUILD_DIR/fuzz/fuzz_$t"
  work="$OUT/$t"
  corpus="$BUILD_DIR/corpus/$t"
  mkdir -p "$work" "$corpus"
  echo "fuzz: $t for ${SECONDS_PER_TARGET} s (log $work/log)"
  start=$(date +%s)
  rc=0
  mkdir -p "$ROOT/fuzz/regressions/$t"
  "$exe" "$corpus" "$ROOT/fuzz/corpus/$t" "$ROOT/fuzz/regressions/$t" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$work/" >"$work/log" 2>&1 || rc=$?
  took=$(( $(date +%s) - start ))
  execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$work/log" | tail -1)
  found=()
  for a in "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-*; do
    [ -e "$a" ] || continue
    kind=$(basename "$a" | cut -d- -f1)
    dest="$ROOT/fuzz/regressions/$t/$kind-$(sha1sum "$a" | cut -c1-12)"
    mkdir -p "$(dirname "$dest")"
    # The smallest input that still fails; the original when minimising fails.
    if "$exe" "$a" -minimize_crash=1 -max_total_time=60 -timeout=10 -rss_limit_mb=2048 \
         -exact_artifact_path="$dest" >"$work/minimize-$kind.log" 2>&1 && [ -s "$dest" ]; then :; else
      cp "$a" "$dest"
    fi
    found+=("$dest")
  done
  if [ ${#found[@]} -gt 0 ] || [ "$rc" -ne 0 ]; then
    status=1
    result="FOUND (exit $rc): ${found[*]:-see $work/log}"
    grep -m3 -E "ERROR: |runtime error|fuzz check failed|terminate called|==[0-9]+==" "$work/log" || true
  else
    result="no crash"
  fi
  summary+=("$(printf '%-11s %6s s  %12s executions  %s' "$t" "$took" "${execs:-?}" "$result")")
done
echo
echo "fuzz summary (${SECONDS_PER_TARGET} s per target; logs in $OUT):"
printf '  %s\n' "${summary[@]}"
exit $status
