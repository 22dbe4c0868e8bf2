#!/usr/bin/env bash
# moec-prune through the real binary: usage errors exit 2, failures exit 1
# with one line on stderr, and every method writes a checkpoint that loads.
#   tests/cli_prune.sh BIN_DIR SOURCE_DIR
set -u
bin=$1
src=$2
q3=$src/tests/fixtures/qwen3moe-random
q2=$src/tests/fixtures/qwen2moe-random
text=$src/data/corpus/c.val.txt
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
. "$src/tests/cli_expect.sh"

p=$bin/moec-prune
head -c 2000 "$text" >"$tmp/small.txt"
"$bin/moec-calib" "$q3" --text "$text" --tokens 512 --ctx 64 --quiet -o "$tmp/q3.stats" >/dev/null ||
  { echo "FAIL: calibration"; exit 1; }
"$bin/moec-calib" "$q2" --text "$text" --tokens 256 --ctx 64 --quiet -o "$tmp/q2.stats" >/dev/null ||
  { echo "FAIL: calibration"; exit 1; }
S=(--stats "$tmp/q3.stats")

expect 0 "--help" -- "$p" --help
expect 2 "unknown option" -- "$p" --no-such-option
expect 2 "no model" -- "$p" --method freq --keep 4 "${S[@]}" -o "$tmp/o"
expect 2 "no method" -- "$p" "$q3" --keep 4 "${S[@]}" -o "$tmp/o"
expect 2 "unknown method" -- "$p" "$q3" --method magic --keep 4 "${S[@]}" -o "$tmp/o"
expect 2 "keep and ratio" -- "$p" "$q3" --method freq --keep 4 --ratio 0.5 "${S[@]}" -o "$tmp/o"
expect 2 "neither keep nor ratio" -- "$p" "$q3" --method freq "${S[@]}" -o "$tmp/o"
expect 2 "ratio 1" -- "$p" "$q3" --method freq --ratio 1 "${S[@]}" -o "$tmp/o"
expect 2 "ratio not a number" -- "$p" "$q3" --method freq --ratio half "${S[@]}" -o "$tmp/o"
expect 2 "keep 0" -- "$p" "$q3" --method freq --keep 0 "${S[@]}" -o "$tmp/o"
expect 2 "no statistics" -- "$p" "$q3" --method freq --keep 4 -o "$tmp/o"
expect 2 "two statistics for freq" -- "$p" "$q3" --method freq --keep 4 "${S[@]}" "${S[@]}" -o "$tmp/o"
expect 2 "sparsity for dern" -- "$p" "$q3" --method dern --keep 4 --sparsity 0.5 "${S[@]}" -o "$tmp/o"
expect 2 "sparsity without text" -- "$p" "$q3" --method stun --keep 4 --sparsity 0.5 "${S[@]}" -o "$tmp/o"
expect 2 "sparsity 1" -- "$p" "$q3" --method stun --keep 4 --sparsity 1 --text "$text" -o "$tmp/o"
expect 2 "domain for freq" -- "$p" "$q3" --method freq --keep 4 --domain c "${S[@]}" -o "$tmp/o"
expect 2 "alpha for stun" -- "$p" "$q3" --method stun --keep 4 --dern-alpha 0.3 "${S[@]}" -o "$tmp/o"
expect 2 "alpha out of range" -- "$p" "$q3" --method dern --keep 4 --dern-alpha 2 "${S[@]}" -o "$tmp/o"
expect 2 "unstructured magnitude" -- "$p" "$q3" --method stun --keep 4 --unstructured magnitude "${S[@]}" -o "$tmp/o"
expect 2 "unstructured for freq" -- "$p" "$q3" --method freq --keep 4 --unstructured wanda "${S[@]}" -o "$tmp/o"
expect 2 "uniform and global" -- "$p" "$q3" --method stun --keep 4 --uniform --global "${S[@]}" -o "$tmp/o"
expect 2 "no output" -- "$p" "$q3" --method freq --keep 4 "${S[@]}"

expect 1 "missing model" -- "$p" "$tmp/none" --method freq --keep 4 "${S[@]}" -o "$tmp/o"
expect 1 "missing statistics" -- "$p" "$q3" --method freq --keep 4 --stats "$tmp/none.stats" -o "$tmp/o"
printf 'not statistics' >"$tmp/bad.stats"
expect 1 "corrupt statistics" -- "$p" "$q3" --method freq --keep 4 --stats "$tmp/bad.stats" -o "$tmp/o"
expect 1 "statistics of another model" -- "$p" "$q3" --method freq --keep 4 --stats "$tmp/q2.stats" -o "$tmp/o"
expect 1 "keep above the experts" -- "$p" "$q3" --method freq --keep 9 "${S[@]}" -o "$tmp/o"
expect 1 "global budget below top_k" -- "$p" "$q3" --method stun --keep 1 --global "${S[@]}" -o "$tmp/o"
expect 1 "unknown domain" -- "$p" "$q3" --method easyep --keep 4 --domain drama "${S[@]}" -o "$tmp/o"
mkdir -p "$tmp/exists"
expect 1 "output exists" -- "$p" "$q3" --method freq --keep 4 "${S[@]}" -o "$tmp/exists"

# every method, uniform: the result loads with 4 experts per layer
for m in freq stun dern easyep; do
  expect 0 "$m" -- "$p" "$q3" --method $m --keep 4 "${S[@]}" -o "$tmp/$m" --quiet
  expect 0 "$m output loads" -- "$bin/moec-inspect" "$tmp/$m"
  grep -q "experts per layer   4 4" "$tmp/out" || { echo "FAIL: $m: not 4 experts per layer"; fails=$((fails + 1)); }
done
# the same on qwen2 (shared expert, top-4 without renormalisation); each output evaluates
for m in freq stun dern easyep; do
  expect 0 "$m qwen2" -- "$p" "$q2" --method $m --keep 5 --stats "$tmp/q2.stats" -o "$tmp/q2-$m" --quiet
  expect 0 "$m qwen2 output evaluates" -- "$bin/moec-eval" --model "$tmp/q2-$m" --base "$q2" \
    --text "$tmp/small.txt" --ctx 64 --quiet
done
expect 0 "stun output evaluates" -- "$bin/moec-eval" --model "$tmp/stun" --base "$q3" --text "$tmp/small.txt" --ctx 64 \
  --quiet
# calibration on the fly, ratio, JSON report on stdout, --force
expect 0 "text, ratio, json" -- "$p" "$q3" --method easyep --ratio 0.25 --text "$text" --tokens 256 --ctx 64 \
  --json --quiet -o "$tmp/freq" --force
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["method"]=="easyep" and d["layers"][0]["experts_after"]==6' \
  "$tmp/out" || { echo "FAIL: JSON report"; fails=$((fails + 1)); }
expect 0 "a list of text files" -- "$p" "$q3" --method freq --keep 4 --text "$text" "$text" --tokens 128 --ctx 64 \
  -o "$tmp/tl" --quiet
expect 2 "model swallowed by a list" -- "$p" --stats "$tmp/q3.stats" "$q3" --method freq --keep 4 -o "$tmp/o"
# STUN with Wanda and the global allocation: per-layer counts only moec reads
expect 0 "stun global + wanda" -- "$p" "$q3" --method stun --keep 3 --global --unstructured wanda --sparsity 0.5 "${S[@]}" \
  --text "$text" --tokens 256 --ctx 64 -o "$tmp/sg"
grep -q "will not load" "$tmp/out" || grep -q "Wanda zeroed" "$tmp/out" ||
  { echo "FAIL: stun report notes"; fails=$((fails + 1)); }
expect 0 "stun global output loads" -- "$bin/moec-inspect" "$tmp/sg"
# qwen2 (shared expert, top-4): keeping 3 lowers top_k, said in the summary (stdout)
expect 0 "top_k lowered" -- "$p" "$q2" --method freq --keep 3 --stats "$tmp/q2.stats" -o "$tmp/q2o"
grep -q "lowered from 4 to 3" "$tmp/out" || { echo "FAIL: top_k note"; fails=$((fails + 1)); }
expect 0 "lowered top_k loads" -- "$bin/moec-inspect" "$tmp/q2o"

echo "cli_prune: $pass passed, $fails failed"
[ "$fails" -eq 0 ]
