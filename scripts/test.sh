#!/usr/bin/env bash
# README command 2: installs dependencies, builds with ASan+UBSan and runs the test suite,
# then a short pass of every fuzz target (FUZZ_SECONDS each, default 20, one target per core at a
# time; FUZZ_SECONDS=0 skips it; skipped with a message where clang's libFuzzer is missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
build="$root/build-test"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOEC_SANITIZE=ON >/dev/null
cmake --build "$build" -j"$(nproc)" >/dev/null
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd "$build" && ctest --output-on-failure -j"$(nproc)" "$@")
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
if [ "$FUZZ_SECONDS" != 0 ]; then
  rc=0
  work=${FUZZ_WORK:-$(mktemp -d)}
  WORK=$work JOBS=$(nproc) PARALLEL=$(nproc) "$root/scripts/fuzz.sh" "$FUZZ_SECONDS" || rc=$?
  if [ "$rc" = 77 ]; then
    echo "test.sh: fuzz pass skipped: no clang with libFuzzer" >&2
  elif [ "$rc" != 0 ]; then
    echo "test.sh: a fuzz target crashed; its input and log are in $work" >&2
    exit "$rc"
  fi
  [ -n "${FUZZ_WORK:-}" ] || rm -rf "$work"
fi
