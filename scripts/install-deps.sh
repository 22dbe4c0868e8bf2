#!/usr/bin/env bash
# Installs everything moec needs to build and test on Debian 12 (run as root or with sudo).
# jq and column (bsdextrautils) only format the demo's comparison table; python3 only writes
# the pages of docs/results/ (scripts/results-*.sh); clang-14 and libclang-rt-14-dev (libFuzzer)
# build the fuzz targets that scripts/test.sh runs briefly and scripts/fuzz.sh runs long.
set -euo pipefail
PKGS="build-essential cmake pkg-config libopenblas-dev liblapacke-dev libglpk-dev libzstd-dev
      libcmocka-dev libcjson-dev libpcre2-dev libutf8proc-dev libxxhash-dev jq bsdextrautils python3
      clang-14 libclang-rt-14-dev"
missing=""
for p in $PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  echo "installing:$missing" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
