#!/usr/bin/env bash
# README command 1: installs dependencies, builds moec (Release) and runs the
# main job on the bundled tiny Mixtral: inspect it, generate text, evaluate
# it on held-out text of its four domains and measure its speed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DMOEC_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
bin=build/bin
model=models/mixtral-tiny
corpus=data/corpus

echo "== inspect"
$bin/moec-inspect $model
echo
echo "== generate"
$bin/moec-run $model -p "def main(" -n 48 --temp 0.7 --seed 7
echo
echo "== evaluate (perplexity at ctx 256, multiple choice)"
$bin/moec-eval --model $model --text $corpus/drama.val.txt --text $corpus/scripture.val.txt \
  --text $corpus/python.val.txt --text $corpus/c.val.txt --mc $corpus/mc.val.jsonl --quiet
echo
echo "== speed"
$bin/moec-bench $model --reps 3
