#!/usr/bin/env bash
# --version on every tool: "TOOL (moec) VERSION, git COMMIT", the commit a
# real one of this repository when the source has git history, and
# "unknown" for a source tree without .git (a release tarball), where the
# version step must still work.
#   tests/cli_version.sh BIN_DIR SOURCE_DIR
set -u
bin=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
pass=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
version=$(sed -n 's/^project(moec VERSION \([0-9.]*\).*/\1/p' "$src/CMakeLists.txt")

for t in moec-inspect moec-run moec-tokenize moec-eval moec-bench moec-calib moec-prune moec-merge moec-quant \
  moec-export; do
  out=$("$bin/$t" --version 2>"$tmp/err")
  rc=$?
  if [ $rc -ne 0 ] || [ -s "$tmp/err" ]; then fail "$t --version: exit $rc"; cat "$tmp/err"; continue; fi
  if ! [[ "$out" =~ ^$t\ \(moec\)\ ${version//./\\.},\ git\ ([0-9a-f]{12}(-dirty)?|unknown)$ ]]; then
    fail "$t --version: '$out'"; continue
  fi
  commit=${BASH_REMATCH[1]%-dirty}
  if [ -e "$src/.git" ] && command -v git >/dev/null; then
    git -C "$src" cat-file -e "$commit^{commit}" 2>/dev/null || { fail "$t --version: $commit is no commit of $src"; continue; }
  fi
  pass=$((pass + 1))
done

# the version step on a tree without .git, as a tarball unpacks
mkdir -p "$tmp/tarball"
cmake -DSOURCE_DIR="$tmp/tarball" -DOUT="$tmp/v.c" -DVERSION="$version" -P "$src/cmake/moec_version.cmake" ||
  fail "version step failed without .git"
if grep -q 'moec_cli_commit\[\] = "unknown";' "$tmp/v.c" && grep -q "moec_cli_version\[\] = \"$version\";" "$tmp/v.c"; then
  pass=$((pass + 1))
else
  fail "without .git:"; cat "$tmp/v.c"
fi
# and it rewrites the file only when the text changes (no relink at every build)
touch -d '2000-01-01' "$tmp/v.c"
cmake -DSOURCE_DIR="$tmp/tarball" -DOUT="$tmp/v.c" -DVERSION="$version" -P "$src/cmake/moec_version.cmake"
[ "$(stat -c %Y "$tmp/v.c")" = "$(date -d '2000-01-01' +%s)" ] && pass=$((pass + 1)) || fail "version file rewritten unchanged"

echo "cli_version: $pass passed, $fails failed"
[ "$fails" -eq 0 ]
