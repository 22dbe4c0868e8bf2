#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz (clang, ASan + UBSan, checksums
# skipped: CMake's -DMOEC_FUZZ=ON in build-fuzz/) and runs them.
#
#   scripts/fuzz.sh [SECONDS]        every target for SECONDS (default 30) each
#   scripts/fuzz.sh --long [RUNS]    every target for RUNS executions (default
#                                    10000000), one at a time under nice -n 19,
#                                    with coverage; logs in $WORK/long-TARGET.log
#   scripts/fuzz.sh --seeds          rewrites tests/fuzz/corpus from
#                                    make_seeds.py and make_fuzz_seeds
#                                    (needs BIN with make_fuzz_seeds, e.g. build/bin)
#   TARGETS="config stats" scripts/fuzz.sh 60    only those targets
#   PARALLEL=2 scripts/fuzz.sh 20                 two targets at a time (short runs only)
#
# Inputs the fuzzer finds go to a scratch corpus ($WORK/corpus-TARGET), never
# into the repository; the seeds in tests/fuzz/corpus stay as committed. A
# crash stops the run with the target's name and the input that crashed
# ($WORK/crash-TARGET-*): copy it to tests/fuzz/regress/TARGET/ once fixed,
# where every ctest run replays it.
#
# Environment: CC (default clang-14, else clang), WORK (default
# /tmp/moec-fuzz), FUZZ_BUILD (default build-fuzz), JOBS (build jobs, default 2),
# PARALLEL (short runs at once, default 1; long runs are always one at a time).
# Exit 0 when no target crashed; 1 when one did; 77 when there is no clang
# with libFuzzer (callers such as scripts/test.sh skip the pass then).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
WORK=${WORK:-/tmp/moec-fuzz}
FUZZ_BUILD=${FUZZ_BUILD:-build-fuzz}
JOBS=${JOBS:-2}
mode=short
seconds=30
runs=10000000
case "${1:-}" in
  --long) mode=long; runs=${2:-$runs} ;;
  --seeds) mode=seeds ;;
  "") ;;
  *) seconds=$1 ;;
esac
log() { echo "fuzz: $*" >&2; }

all_targets() { (cd tests/fuzz && ls fuzz_*.c) | sed 's/^fuzz_//; s/\.c$//'; }
TARGETS=${TARGETS:-$(all_targets | tr '\n' ' ')}

if [ "$mode" = seeds ]; then
  BIN=${BIN:-build/bin}
  [ -x "$BIN/make_fuzz_seeds" ] || { log "no $BIN/make_fuzz_seeds: build the tests first"; exit 1; }
  rm -rf tests/fuzz/corpus
  python3 tests/fuzz/make_seeds.py "$root" tests/fuzz/corpus
  "$BIN/make_fuzz_seeds" tests/fuzz/corpus
  for t in $(all_targets); do
    [ -d "tests/fuzz/corpus/$t" ] || { log "no seeds for target $t"; exit 1; }
  done
  log "seeds written to tests/fuzz/corpus"
  exit 0
fi

CC=${CC:-}
if [ -z "$CC" ]; then
  if command -v clang-14 >/dev/null; then CC=clang-14; elif command -v clang >/dev/null; then CC=clang; fi
fi
if [ -z "$CC" ] || ! echo 'int LLVMFuzzerTestOneInput(const char *d, long n) { return 0; }' |
    "$CC" -x c -fsanitize=fuzzer,address -o /dev/null - 2>/dev/null; then
  log "no clang with libFuzzer (CC=${CC:-none}); install clang-14 and libclang-rt-14-dev"
  exit 77
fi

CC=$CC cmake -S . -B "$FUZZ_BUILD" -DMOEC_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$FUZZ_BUILD" -j"$JOBS" >/dev/null
mkdir -p "$WORK"

# per target: longest input tried (bytes)
max_len() {
  case $1 in
    container|moec_model) echo 16384 ;;
    safetensors|safetensors_index|stats|tokenizer) echo 8192 ;;
    *) echo 4096 ;;
  esac
}

export ASAN_OPTIONS=abort_on_error=1:detect_leaks=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export MOEC_SOURCE_DIR=$root

PARALLEL=${PARALLEL:-1}
rm -f "$WORK/failed"
# one target; appends its name to $WORK/failed when it crashed
run_target() {
  local t=$1 exe=$FUZZ_BUILD/bin/fuzz_$1 corpus=$WORK/corpus-$1
  mkdir -p "$corpus"
  local args=(-max_len="$(max_len "$t")" -timeout=20 -rss_limit_mb=2048 -malloc_limit_mb=1024
              -artifact_prefix="$WORK/crash-$t-" -print_final_stats=1)
  [ -f "tests/fuzz/$t.dict" ] && args+=(-dict="tests/fuzz/$t.dict")
  local inputs=("$corpus" "tests/fuzz/corpus/$t")
  [ -d "tests/fuzz/regress/$t" ] && inputs+=("tests/fuzz/regress/$t")
  if [ "$mode" = long ]; then
    rm -rf "$corpus" && mkdir -p "$corpus"
    log "$t: $runs runs (log: $WORK/long-$t.log)"
    local start
    start=$(date +%s)
    nice -n 19 "$exe" "${args[@]}" -runs="$runs" -print_coverage=1 "${inputs[@]}" \
      >"$WORK/long-$t.log" 2>&1 || echo "$t" >>"$WORK/failed"
    echo "wall_seconds: $(($(date +%s) - start))" >>"$WORK/long-$t.log"
    echo "corpus_files: $(find "$corpus" -type f | wc -l) corpus_bytes: $(du -sb "$corpus" | cut -f1)" \
      >>"$WORK/long-$t.log"
  else
    log "$t: ${seconds}s"
    if ! "$exe" "${args[@]}" -max_total_time="$seconds" "${inputs[@]}" >"$WORK/short-$t.log" 2>&1; then
      echo "$t" >>"$WORK/failed"
      tail -n 40 "$WORK/short-$t.log" >&2
    fi
  fi
}

for t in $TARGETS; do
  [ -x "$FUZZ_BUILD/bin/fuzz_$t" ] || { log "no target $t"; exit 1; }
done
running=0
for t in $TARGETS; do
  if [ "$mode" = long ] || [ "$PARALLEL" -le 1 ]; then
    run_target "$t"
    continue
  fi
  run_target "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$PARALLEL" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait
if [ -s "$WORK/failed" ]; then
  log "CRASH in: $(tr '\n' ' ' <"$WORK/failed")(inputs: $WORK/crash-*; logs in $WORK)"
  exit 1
fi
log "no crash in: $TARGETS"
