#!/usr/bin/env bash
# moec-merge through the real binary: usage errors of the calibration-driven
# options exit 2; every merge form writes a model that loads and runs; a
# factored .moec is counted by moec-inspect, run by moec-eval, quantized by
# --quant-bits and multiplied out by moec-export into an HF checkpoint.
#   tests/cli_merge.sh BIN_DIR SOURCE_DIR
set -u
bin=$1
src=$2
q3=$src/tests/fixtures/qwen3moe-random
q2=$src/tests/fixtures/qwen2moe-random
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
. "$src/tests/cli_expect.sh"
head -c 6000 "$src/data/corpus/c.val.txt" >"$tmp/c.txt"
head -c 6000 "$src/data/corpus/drama.val.txt" >"$tmp/drama.txt"

m=("$bin/moec-merge" "$q3" --quiet --text "$tmp/c.txt" --text "$tmp/drama.txt" --ctx 64 --tokens 1024
   --sim-tokens 256)
expect 2 "--factored into a directory" -- "${m[@]}" --method submoe --keep 6 --rank 8 --factored -o "$tmp/d"
expect 2 "--quant-bits into a directory" -- "${m[@]}" --method submoe --keep 6 --quant-bits 4 -o "$tmp/d"
expect 2 "--quant-bits 9" -- "${m[@]}" --method submoe --keep 6 --quant-bits 9 -o "$tmp/x.moec"
expect 2 "--whiten with average" -- "${m[@]}" --method average --keep 6 --whiten -o "$tmp/d"
expect 2 "--fit-all without --fit-down" -- "${m[@]}" --method average --keep 6 --fit-all -o "$tmp/d"
expect 2 "--features unknown" -- "${m[@]}" --method submoe --keep 6 --features all -o "$tmp/d"
expect 2 "--cluster unknown" -- "${m[@]}" --method submoe --keep 6 --cluster joint3 -o "$tmp/d"
expect 2 "--router unknown" -- "${m[@]}" --method submoe --keep 6 --router mean -o "$tmp/d"
expect 2 "--ridge 0" -- "${m[@]}" --method submoe --keep 6 --ridge 0 -o "$tmp/d"
expect 2 "--whiten with --stats" -- "$bin/moec-merge" "$q3" --method submoe --keep 6 --stats "$tmp/none.stats" \
  --whiten -o "$tmp/d"
[ -e "$tmp/d" ] && { echo "FAIL: a usage error left $tmp/d"; fails=$((fails + 1)); }

# the default (fitted) merge, into an HF checkpoint that loads and runs
expect 0 "default merge" -- "${m[@]}" --method submoe --keep 5 --json -o "$tmp/def"
grep -q '"out_err"' "$tmp/out" || { echo "FAIL: default merge: no out_err in the report"; fails=$((fails + 1)); }
grep -Eq '"ridge":[[:space:]]*0.3' "$tmp/out" || { echo "FAIL: default merge: ridge is not 0.3"; fails=$((fails + 1)); }
expect 0 "default merge runs" -- "$bin/moec-eval" --model "$tmp/def" --base "$q3" --text "$tmp/c.txt" --ctx 64
expect 0 "merge of a shared-expert model" -- "$bin/moec-merge" "$q2" --quiet --text "$tmp/c.txt" --ctx 64 \
  --tokens 1024 --sim-tokens 256 --method submoe --keep 3 --cluster joint2 -o "$tmp/q2m"
expect 0 "shared-expert merge runs" -- "$bin/moec-eval" --model "$tmp/q2m" --base "$q2" --text "$tmp/c.txt" --ctx 64

# Sub-MoE† stored factored: counted, run, quantized, exported
expect 0 "factored merge" -- "${m[@]}" --method submoe --keep 5 --features fold --rank 8 --whiten --factored \
  -o "$tmp/f.moec"
expect 0 "inspect factored" -- "$bin/moec-inspect" "$tmp/f.moec" --json
grep -q '"factored"' "$tmp/out" || { echo "FAIL: moec-inspect does not report factored weights"; fails=$((fails + 1)); }
expect 0 "eval factored" -- "$bin/moec-eval" --model "$tmp/f.moec" --base "$q3" --text "$tmp/c.txt" --ctx 64 --json
kl_f=$(grep -o '"kld_mean":[^,]*' "$tmp/out" | head -1)
expect 0 "export factored" -- "$bin/moec-export" "$tmp/f.moec" --hf "$tmp/fhf" --dtype f32
expect 0 "eval exported" -- "$bin/moec-eval" --model "$tmp/fhf" --base "$q3" --text "$tmp/c.txt" --ctx 64 --json
kl_e=$(grep -o '"kld_mean":[^,]*' "$tmp/out" | head -1)
python3 - "$kl_f" "$kl_e" <<'PY' || { echo "FAIL: factored and exported KL differ: $kl_f vs $kl_e"; fails=$((fails + 1)); }
import sys
a, b = (float(x.split(":")[1]) for x in sys.argv[1:3])
sys.exit(0 if abs(a - b) <= 1e-4 * max(1.0, abs(b)) else 1)
PY
expect 0 "factored, 4-bit factors" -- "${m[@]}" --method submoe --keep 5 --features fold --rank 8 --whiten \
  --factored --quant-bits 4 --quant-group 32 -o "$tmp/fq.moec"
expect 0 "eval 4-bit factors" -- "$bin/moec-eval" --model "$tmp/fq.moec" --base "$q3" --text "$tmp/c.txt" --ctx 64
[ "$(stat -c %s "$tmp/fq.moec")" -lt "$(stat -c %s "$tmp/f.moec")" ] ||
  { echo "FAIL: 4-bit factors are not smaller"; fails=$((fails + 1)); }
expect 1 "HF-only tool refuses a factored model" -- "$bin/moec-merge" "$tmp/f.moec" --quiet --text "$tmp/c.txt" \
  --ctx 64 --tokens 512 --method average --keep 4 -o "$tmp/again"

echo "cli_merge: $pass passed, $fails failed"
[ "$fails" -eq 0 ]
