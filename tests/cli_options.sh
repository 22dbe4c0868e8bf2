#!/usr/bin/env bash
# The options every tool shares, through the real binaries: --text FILE...
# reads the same as a list and as repeats in every tool that takes text,
# moec-quant's presets combine with explicit options and the report says
# where each value came from, --avg-bits implies --bits, and --json/--quiet
# mean the same everywhere. (Exit codes of bad input: cli_errors.sh.)
#   tests/cli_options.sh BIN_DIR SOURCE_DIR
set -u
bin=$1
src=$2
model=$src/models/mixtral-tiny
small=$src/tests/fixtures/qwen2moe-random
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
. "$src/tests/cli_expect.sh"

out=$tmp/outdir
mkdir -p "$out"
q=("$bin/moec-quant" "$small" --quiet --verify-tokens 0)
"${q[@]}" --bits 4 -o "$tmp/q.moec" || { echo "FAIL: setup"; exit 1; }

# --text FILE...: the list form and the repeat form give the same result in
# every tool that reads text, and a list swallowing MODEL says so.
head -c 1500 "$src/data/corpus/c.val.txt" >"$tmp/t1.txt"
head -c 1500 "$src/data/corpus/python.val.txt" >"$tmp/t2.txt"
head -c 1500 "$src/data/corpus/scripture.val.txt" >"$tmp/t3.txt"
list=(--text "$tmp/t1.txt" "$tmp/t2.txt" "$tmp/t3.txt")
rept=(--text "$tmp/t1.txt" --text "$tmp/t2.txt" --text="$tmp/t3.txt")
mixd=(--text "$tmp/t1.txt" "$tmp/t2.txt" --text "$tmp/t3.txt")
same() { # same DESCRIPTION FILE_A FILE_B
  if cmp -s "$2" "$3"; then pass=$((pass + 1)); else echo "FAIL: $1: list and repeat forms differ"; diff "$2" "$3" | head; fails=$((fails + 1)); fi
}
# a quantization report less what differs between runs: times, the output's name and size
nosecs() { grep -v 'seconds\|"output"\|"file_bytes"\|"bpw_file"' "$1" >"$1.ns"; }
for form in list rept mixd; do
  eval "args=(\"\${$form[@]}\")"
  expect 0 "calib --text ($form)" -- "$bin/moec-calib" "$small" "${args[@]}" --ctx 32 -o "$tmp/$form.stats" --quiet
  expect 0 "eval --text ($form)" -- "$bin/moec-eval" "$small" "${args[@]}" --ctx 32 --json
  grep -v moec_version "$tmp/out" >"$tmp/eval-$form.json"
  [ $form = mixd ] && continue
  expect 0 "prune --text ($form)" -- "$bin/moec-prune" "$small" --method freq --keep 2 "${args[@]}" --ctx 32 \
    -o "$tmp/prune-$form" --quiet
  expect 0 "merge --text ($form)" -- "$bin/moec-merge" "$small" --method average --keep 2 "${args[@]}" --ctx 32 \
    -o "$tmp/merge-$form" --quiet
  expect 0 "quant --text ($form)" -- "$bin/moec-quant" "$small" --method gptq --bits 4 "${args[@]}" --ctx 32 \
    --tokens 512 --verify-tokens 0 -o "$tmp/quant-$form.moec" --json
  nosecs "$tmp/out"; mv "$tmp/out.ns" "$tmp/quant-$form.json"
done
for form in rept mixd; do
  same "calib ($form)" "$tmp/list.stats" "$tmp/$form.stats"
  same "eval ($form)" "$tmp/eval-list.json" "$tmp/eval-$form.json"
  [ $form = mixd ] && continue
  same "prune ($form)" "$tmp/prune-list/model.safetensors" "$tmp/prune-$form/model.safetensors"
  same "merge ($form)" "$tmp/merge-list/model.safetensors" "$tmp/merge-$form/model.safetensors"
  same "quant ($form)" "$tmp/quant-list.json" "$tmp/quant-$form.json"
done
grep -q '"tokens":' "$tmp/eval-list.json" && [ "$(grep -c '\.txt"' "$tmp/eval-list.json")" -ge 3 ] ||
  { echo "FAIL: eval of three files reports fewer"; fails=$((fails + 1)); }
expect 2 "calib: a list swallowing MODEL" -- "$bin/moec-calib" --text "$tmp/t1.txt" "$small" -o "$tmp/x.stats"
grep -q "give MODEL before it" "$tmp/err" || { echo "FAIL: no hint that the list took MODEL"; fails=$((fails + 1)); }
expect 2 "eval: a list swallowing MODEL" -- "$bin/moec-eval" --text "$tmp/t1.txt" "$small"
grep -q "give MODEL before it" "$tmp/err" || { echo "FAIL: eval: no hint that the list took MODEL"; fails=$((fails + 1)); }
expect 2 "a list with no value" -- "$bin/moec-calib" "$small" --text --ctx 32 -o "$tmp/x.stats"
expect 0 "eval --model after a list" -- "$bin/moec-eval" --text "$tmp/t1.txt" "$tmp/t2.txt" --model "$small" --ctx 32
expect 2 "eval MODEL and --model" -- "$bin/moec-eval" "$small" --model "$small" --text "$tmp/t1.txt"
expect 2 "extra operand" -- "$bin/moec-inspect" "$small" "$small"

# moec-quant presets: explicit options win, the report says where each value came from
jsonget() { python3 -c 'import json,sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2:]:
    v = v[int(k)] if isinstance(v, list) else v[k]
print(v)' "$@"; }
expect 0 "quant --list-presets" -- "$bin/moec-quant" --list-presets
for p in 8bit 4bit 4bit-rtn 3bit mix2.5 mix2.0; do
  grep -q "^$p " "$tmp/out" || { echo "FAIL: --list-presets lacks $p"; fails=$((fails + 1)); }
done
expect 0 "quant --list-presets --json" -- "$bin/moec-quant" --list-presets --json
[ "$(jsonget "$tmp/out" presets 1 name)" = 4bit ] || { echo "FAIL: --list-presets --json"; fails=$((fails + 1)); }
expect_clean 2 "quant unknown preset" "$out" -- "${q[@]}" --preset Q9_X -o "$out/x.moec"
expect_clean 2 "quant gptq preset without text" "$out" -- "${q[@]}" --preset 4bit -o "$out/x.moec"
grep -q -- "--preset 4bit (GPTQ) needs --text" "$tmp/err" || { echo "FAIL: preset without text: $(cat "$tmp/err")"; fails=$((fails + 1)); }
expect_clean 2 "quant neither --bits nor --preset" "$out" -- "${q[@]}" -o "$out/x.moec"
grep -q -- "--preset NAME" "$tmp/err" || { echo "FAIL: missing --bits does not offer --preset"; fails=$((fails + 1)); }
expect 0 "quant --preset 4bit-rtn --group 128" -- "${q[@]}" --preset 4bit-rtn --group 128 -o "$tmp/p.moec" --json
for kv in "preset=4bit-rtn" "recipe_sources group from=option" "recipe_sources group value=128" \
  "recipe_sources bits from=preset" "recipe_sources bits value=4" "recipe_sources embed-bits value=8" \
  "recipe_sources attn value=on" "recipe_sources sym from=default" "recipe group=128" "recipe embed_bits=8"; do
  path=${kv%%=*} want=${kv#*=}
  read -r -a keys <<<"$path"
  got=$(jsonget "$tmp/out" "${keys[@]}" 2>/dev/null)
  [ "$got" = "$want" ] || { echo "FAIL: quant preset report: $path = '$got', expected '$want'"; fails=$((fails + 1)); }
done
qs=("$bin/moec-quant" "$small" --verify-tokens 0) # summary on stdout
expect 0 "quant --preset 4bit-rtn text summary" -- "${qs[@]}" --preset 4bit-rtn --no-attn --embed-bits 0 \
  -o "$tmp/p.moec" --force
grep -q "recipe: preset 4bit-rtn" "$tmp/out" && grep -q "options over the preset: --no-attn --embed-bits 0" "$tmp/out" ||
  { echo "FAIL: quant summary does not say where the recipe came from:"; cat "$tmp/out"; fails=$((fails + 1)); }
# --avg-bits implies the experts' widths: no --bits needed, and the report says what it took
expect 0 "quant --avg-bits without --bits" -- "${q[@]}" --avg-bits 2.5 --text "$tmp/t1.txt" --ctx 32 --tokens 512 \
  -o "$tmp/m.moec" --json
[ "$(jsonget "$tmp/out" recipe_sources bits from)" = implied ] && [ "$(jsonget "$tmp/out" recipe bits)" = 4 ] ||
  { echo "FAIL: --avg-bits without --bits: bits not implied"; fails=$((fails + 1)); }
expect 0 "quant --avg-bits, text summary" -- "${qs[@]}" --avg-bits 2 --bit-choices 1,2,3 --alloc uniform \
  -o "$tmp/m.moec" --force
grep -q "implied: --bits 3 (the widest --bit-choices width" "$tmp/out" ||
  { echo "FAIL: implied --bits not in the summary:"; cat "$tmp/out"; fails=$((fails + 1)); }

# moec-export: -o is --hf; moec-run and moec-tokenize: --json
expect_clean 2 "export --hf and -o" "$out" -- "$bin/moec-export" "$tmp/q.moec" --hf "$out/e" -o "$out/e"
expect 0 "export -o" -- "$bin/moec-export" "$tmp/q.moec" -o "$tmp/e-o" --quiet
[ -f "$tmp/e-o/model.safetensors" ] || { echo "FAIL: export -o wrote nothing"; fails=$((fails + 1)); }
expect 0 "run --json" -- "$bin/moec-run" "$model" -p "int main" --gen 4 --temp 0 --json
[ "$(jsonget "$tmp/out" generated_tokens)" = 4 ] && [ ! -s "$tmp/err" ] || { echo "FAIL: run --json"; fails=$((fails + 1)); }
expect 0 "run --quiet" -- "$bin/moec-run" "$model" -p "int main" -n 4 --temp 0 --quiet
[ ! -s "$tmp/err" ] || { echo "FAIL: run --quiet printed on stderr"; fails=$((fails + 1)); }
printf 'Hello, world!' >"$tmp/hello.txt"
expect 0 "tokenize --json" -- "$bin/moec-tokenize" "$model" --json <"$tmp/hello.txt"
[ "$(jsonget "$tmp/out" tokens)" = 6 ] || { echo "FAIL: tokenize --json"; fails=$((fails + 1)); }
expect 0 "tokenize -ds" -- sh -c "echo 1 275 280 | '$bin/moec-tokenize' -ds '$src/tests/data/tokenizer_sp.json'"
[ "$(cat "$tmp/out")" = "hello world" ] || { echo "FAIL: tokenize -ds: $(cat "$tmp/out")"; fails=$((fails + 1)); }
expect 0 "bench --prompt-lengths" -- "$bin/moec-bench" "$small" --reps 1 --prompt-lengths 4,8 -n 4 --json
expect 2 "bench --prompt-lengths 4" -- "$bin/moec-bench" "$small" --prompt-lengths 4
# calib, like every tool that writes, keeps an existing output without --force
cp "$tmp/list.stats" "$tmp/keep.stats"
expect 1 "calib output exists" -- "$bin/moec-calib" "$small" --text "$tmp/t1.txt" --ctx 32 -o "$tmp/keep.stats"
cmp -s "$tmp/list.stats" "$tmp/keep.stats" || { echo "FAIL: calib replaced an existing output"; fails=$((fails + 1)); }

echo "cli_options: $pass passed, $fails failed"
[ "$fails" -eq 0 ]
