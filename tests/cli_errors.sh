#!/usr/bin/env bash
# Exit codes and one-line errors of the real binaries: usage errors exit 2,
# failures exit 1 with one line on stderr, never a crash or a partial output.
set -u
bin=$1
src=$2
model=$src/models/mixtral-tiny
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
pass=0

# expect CODE DESCRIPTION -- COMMAND...
expect() {
  local want=$1 what=$2
  shift 3
  "$@" >"$tmp/out" 2>"$tmp/err"
  local got=$?
  local lines
  lines=$(wc -l <"$tmp/err")
  if [ "$got" -ne "$want" ]; then
    echo "FAIL: $what: exit $got, expected $want"; cat "$tmp/err"; fails=$((fails + 1)); return
  fi
  if [ "$want" -eq 1 ] && [ "$lines" -ne 1 ]; then
    echo "FAIL: $what: expected one line on stderr, got $lines"; cat "$tmp/err"; fails=$((fails + 1)); return
  fi
  pass=$((pass + 1))
}

# a corrupt checkpoint: valid config, truncated weights
mkdir -p "$tmp/trunc" "$tmp/badjson" "$tmp/unknown" "$tmp/shape"
cp "$model/config.json" "$model/tokenizer.json" "$tmp/trunc/"
head -c 1000000 "$model/model.safetensors" >"$tmp/trunc/model.safetensors"
cp "$model/model.safetensors" "$model/tokenizer.json" "$tmp/badjson/"
printf '{"architectures": ["MixtralForCausalLM"], "hidden_size": 256,' >"$tmp/badjson/config.json"
cp "$model/model.safetensors" "$tmp/unknown/"
sed 's/MixtralForCausalLM/GrokForCausalLM/' "$model/config.json" >"$tmp/unknown/config.json"
cp "$model/model.safetensors" "$tmp/shape/"
sed 's/"intermediate_size": 512/"intermediate_size": 256/' "$model/config.json" >"$tmp/shape/config.json"
printf 'hello world\n' >"$tmp/text.txt"

# Every tool: --help and --version exit 0 on stdout, an unknown option or a
# missing value exits 2, and the common options read the same everywhere.
all_tools=(moec-inspect moec-run moec-tokenize moec-eval moec-bench moec-calib moec-prune moec-merge moec-quant
           moec-export)
for tool in "${all_tools[@]}"; do
  expect 0 "$tool --help" -- "$bin/$tool" --help
  head -1 "$tmp/out" | grep -q "^usage: $tool " || { echo "FAIL: $tool --help: no usage line"; fails=$((fails + 1)); }
  expect 0 "$tool -h" -- "$bin/$tool" -h
  expect 0 "$tool --version" -- "$bin/$tool" --version
  grep -q "^$tool (moec) " "$tmp/out" || { echo "FAIL: $tool --version: $(cat "$tmp/out")"; fails=$((fails + 1)); }
  expect 2 "$tool bad option" -- "$bin/$tool" --no-such-option
  expect 2 "$tool abbreviated option" -- "$bin/$tool" --hel
  expect 2 "$tool --help=x" -- "$bin/$tool" --help=x
  expect 2 "$tool --quiet=1" -- "$bin/$tool" "$model" --quiet=1
  grep -q "takes no value" "$tmp/err" || { echo "FAIL: $tool --quiet=1: $(cat "$tmp/err")"; fails=$((fails + 1)); }
  "$bin/$tool" --help >"$tmp/help-$tool"
  # --json and --quiet in every tool; --threads in every tool that computes
  for opt in json quiet threads; do
    grep -E "^      --$opt( |$)" "$tmp/help-$tool" >"$tmp/line-$opt-$tool" || true
  done
  for opt in json quiet; do
    [ -s "$tmp/line-$opt-$tool" ] || { echo "FAIL: $tool has no --$opt"; fails=$((fails + 1)); }
  done
done
for tool in moec-run moec-eval moec-bench moec-calib moec-prune moec-merge moec-quant; do
  [ -s "$tmp/line-threads-$tool" ] || { echo "FAIL: $tool has no --threads"; fails=$((fails + 1)); }
  expect 2 "$tool --threads 0" -- "$bin/$tool" "$model" --threads 0
  expect 2 "$tool --threads x" -- "$bin/$tool" "$model" --threads x
  expect 2 "$tool --threads without a value" -- "$bin/$tool" "$model" --threads
done
# one help text per common option, whichever tool prints it
for opt in json quiet threads; do
  n=$(cat "$tmp"/line-$opt-* | sort -u | wc -l)
  [ "$n" -eq 1 ] || { echo "FAIL: --$opt reads $n ways:"; cat "$tmp"/line-$opt-* | sort -u; fails=$((fails + 1)); }
done
for tool in moec-calib moec-prune moec-merge moec-quant; do
  grep -qE "^  -o, --output " "$tmp/help-$tool" || { echo "FAIL: $tool has no -o, --output"; fails=$((fails + 1)); }
  grep -qE "^      --force +replace the output if it exists$" "$tmp/help-$tool" ||
    { echo "FAIL: $tool --force"; fails=$((fails + 1)); }
done
expect 2 "inspect without model" -- "$bin/moec-inspect"
expect 1 "inspect missing dir" -- "$bin/moec-inspect" "$tmp/none"
expect 1 "inspect truncated safetensors" -- "$bin/moec-inspect" "$tmp/trunc"
expect 1 "inspect malformed config" -- "$bin/moec-inspect" "$tmp/badjson"
expect 1 "inspect unknown architecture" -- "$bin/moec-inspect" "$tmp/unknown"
expect 1 "inspect shape mismatch" -- "$bin/moec-inspect" "$tmp/shape"
expect 0 "inspect ok" -- "$bin/moec-inspect" "$model" --json
expect 2 "run without prompt" -- "$bin/moec-run" "$model"
expect 2 "run bad -n" -- "$bin/moec-run" "$model" -p hi -n abc
expect 1 "run truncated" -- "$bin/moec-run" "$tmp/trunc" -p hi
expect 0 "run ok" -- "$bin/moec-run" "$model" -p "int main" -n 4 --temp 0
expect 2 "eval without model" -- "$bin/moec-eval" --text "$tmp/text.txt"
expect 2 "eval nothing to do" -- "$bin/moec-eval" --model "$model"
expect 2 "eval gate without base" -- "$bin/moec-eval" --model "$model" --text "$tmp/text.txt" --max-kld 1
expect 2 "eval bad ctx" -- "$bin/moec-eval" --model "$model" --text "$tmp/text.txt" --ctx 1
expect 1 "eval text shorter than a window" -- "$bin/moec-eval" --model "$model" --text "$tmp/text.txt"
expect 1 "eval missing text file" -- "$bin/moec-eval" --model "$model" --text "$tmp/none.txt"
printf '{"context": "a", "choices": ["b"], "label": 3}\n' >"$tmp/bad.jsonl"
expect 1 "eval bad mc label" -- "$bin/moec-eval" --model "$model" --mc "$tmp/bad.jsonl"
head -c 3000 "$src/data/corpus/drama.val.txt" >"$tmp/drama.txt"
expect 0 "eval self vs self passes a tight gate" -- "$bin/moec-eval" --model "$model" --base "$model" \
  --text "$tmp/drama.txt" --ctx 64 --max-kld 1e-9 --max-ppl-ratio 1.000001
expect 3 "eval gate trips" -- "$bin/moec-eval" --model "$model" --base "$model" \
  --text "$tmp/drama.txt" --ctx 64 --max-ppl-ratio 0.5
expect 2 "tokenize without model" -- "$bin/moec-tokenize"
expect 1 "tokenize missing model" -- "$bin/moec-tokenize" "$tmp/none"
expect 2 "bench bad threads" -- "$bin/moec-bench" "$model" --threads 0

# expect_clean CODE DESCRIPTION DIR -- COMMAND...: expect, and afterwards DIR
# holds exactly what it held before (no output, no temporary left behind)
expect_clean() {
  local want=$1 what=$2 dir=$3
  local before after
  before=$(ls -A "$dir")
  expect "$want" "$what" -- "${@:5}"
  after=$(ls -A "$dir")
  if [ "$before" != "$after" ]; then
    echo "FAIL: $what: left behind in $dir:"; comm -13 <(echo "$before") <(echo "$after"); fails=$((fails + 1))
  fi
}

# moec-eval --score-from
expect 2 "eval score-from beyond ctx-2" -- "$bin/moec-eval" --model "$model" --text "$tmp/drama.txt" --ctx 64 \
  --score-from 63
expect 2 "eval score-from negative" -- "$bin/moec-eval" --model "$model" --text "$tmp/drama.txt" --score-from -1
expect 2 "eval score-from not a number" -- "$bin/moec-eval" --model "$model" --text "$tmp/drama.txt" --score-from x
expect 0 "eval score-from half" -- "$bin/moec-eval" --model "$model" --text "$tmp/drama.txt" --ctx 64 \
  --score-from half --json
if ! grep -q '"score_from":[[:space:]]*32,' "$tmp/out"; then
  echo "FAIL: eval score-from half: the report does not record score_from 32"; fails=$((fails + 1))
fi

# moec-quant, moec-merge, moec-export: a small model, a small .moec made by
# RTN, a corrupt and a truncated copy, and an output directory that cannot
# be written (its parent is a regular file; a read-only directory as well
# when not root, whom permissions do not stop)
small=$src/tests/fixtures/qwen2moe-random
out=$tmp/outdir
mkdir -p "$out"
printf 'x' >"$tmp/afile"
expect 0 "quant rtn ok" -- "$bin/moec-quant" "$small" --bits 4 --method rtn --verify-tokens 0 --quiet -o "$tmp/q.moec"
size=$(stat -c %s "$tmp/q.moec")
cp "$tmp/q.moec" "$tmp/flip.moec"
byte=$(od -An -tu1 -j $((size / 2)) -N1 "$tmp/flip.moec" | tr -d ' ')
printf "$(printf '\\%03o' $(((byte + 1) % 256)))" |
  dd of="$tmp/flip.moec" bs=1 seek=$((size / 2)) count=1 conv=notrunc status=none
cmp -s "$tmp/q.moec" "$tmp/flip.moec" && { echo "FAIL: could not corrupt the .moec"; fails=$((fails + 1)); }
head -c $((size / 2)) "$tmp/q.moec" >"$tmp/trunc.moec"
ro=
if [ "$(id -u)" -ne 0 ]; then
  ro=$tmp/ro
  mkdir -p "$ro"
  chmod 555 "$ro"
fi


q=("$bin/moec-quant" "$small" --quiet --verify-tokens 0)
expect 2 "quant without model" -- "$bin/moec-quant" --bits 4 -o "$out/x.moec"
expect_clean 2 "quant missing -o" "$out" -- "${q[@]}" --bits 4
expect_clean 2 "quant missing --bits" "$out" -- "${q[@]}" -o "$out/x.moec"
expect_clean 2 "quant --bits 0" "$out" -- "${q[@]}" --bits 0 -o "$out/x.moec"
expect_clean 2 "quant --bits 9" "$out" -- "${q[@]}" --bits 9 -o "$out/x.moec"
expect_clean 2 "quant --bits 4x" "$out" -- "${q[@]}" --bits 4x -o "$out/x.moec"
expect_clean 2 "quant --group -1" "$out" -- "${q[@]}" --bits 4 --group -1 -o "$out/x.moec"
expect_clean 2 "quant --group abc" "$out" -- "${q[@]}" --bits 4 --group abc -o "$out/x.moec"
expect_clean 2 "quant --avg-bits 0.5" "$out" -- "${q[@]}" --bits 4 --avg-bits 0.5 --alloc uniform -o "$out/x.moec"
expect_clean 2 "quant --avg-bits 9" "$out" -- "${q[@]}" --bits 4 --avg-bits 9 --alloc uniform -o "$out/x.moec"
expect_clean 2 "quant --avg-bits nan" "$out" -- "${q[@]}" --bits 4 --avg-bits nan --alloc uniform -o "$out/x.moec"
for bc in 3,2 0,1 1,9 1,x "" 1,,2 2,2; do
  expect_clean 2 "quant --bit-choices '$bc'" "$out" -- "${q[@]}" --bits 4 --avg-bits 2.5 --alloc uniform \
    --bit-choices "$bc" -o "$out/x.moec"
done
expect_clean 2 "quant --bit-choices without --avg-bits" "$out" -- "${q[@]}" --bits 4 --bit-choices 2,4 \
  -o "$out/x.moec"
expect_clean 2 "quant --alloc unknown" "$out" -- "${q[@]}" --bits 4 --avg-bits 2.5 --alloc greedy -o "$out/x.moec"
expect_clean 2 "quant mcmoe without text or stats" "$out" -- "${q[@]}" --bits 4 --avg-bits 2.5 --alloc mcmoe \
  -o "$out/x.moec"
expect_clean 2 "quant mcmoe (default) without text or stats" "$out" -- "${q[@]}" --bits 4 --avg-bits 2.5 \
  -o "$out/x.moec"
expect_clean 2 "quant --mc-objective unknown" "$out" -- "${q[@]}" --bits 4 --avg-bits 2.5 --mc-objective best \
  --text "$tmp/text.txt" -o "$out/x.moec"
expect_clean 2 "quant --diversity without --avg-bits" "$out" -- "${q[@]}" --bits 4 --diversity -o "$out/x.moec"
expect_clean 2 "quant --mc-objective with --alloc uniform" "$out" -- "${q[@]}" --bits 4 --avg-bits 2.5 \
  --alloc uniform --mc-objective paper -o "$out/x.moec"
expect_clean 2 "quant gptq without text" "$out" -- "${q[@]}" --bits 4 --method gptq -o "$out/x.moec"
expect_clean 1 "quant missing model" "$out" -- "$bin/moec-quant" "$tmp/none" --bits 4 -o "$out/x.moec"
expect_clean 1 "quant truncated model" "$out" -- "$bin/moec-quant" "$tmp/trunc" --bits 4 --verify-tokens 0 \
  -o "$out/x.moec"
expect_clean 1 "quant corrupt .moec" "$out" -- "$bin/moec-quant" "$tmp/flip.moec" --bits 4 --verify-tokens 0 \
  -o "$out/x.moec"
expect_clean 1 "quant truncated .moec" "$out" -- "$bin/moec-quant" "$tmp/trunc.moec" --bits 4 --verify-tokens 0 \
  -o "$out/x.moec"
expect_clean 1 "quant missing stats" "$out" -- "${q[@]}" --bits 4 --avg-bits 2.5 --stats "$tmp/none.json" \
  -o "$out/x.moec"
expect_clean 1 "quant output under a file" "$tmp" -- "${q[@]}" --bits 4 -o "$tmp/afile/x.moec"
[ -n "$ro" ] && expect_clean 1 "quant read-only output directory" "$ro" -- "${q[@]}" --bits 4 -o "$ro/x.moec"
cp "$tmp/q.moec" "$out/keep.moec"
expect_clean 1 "quant output exists" "$out" -- "${q[@]}" --bits 4 -o "$out/keep.moec"
cmp -s "$tmp/q.moec" "$out/keep.moec" || { echo "FAIL: quant replaced an existing output"; fails=$((fails + 1)); }
rm -f "$out/keep.moec"

mg=("$bin/moec-merge" "$small" --quiet --text "$tmp/drama.txt" --ctx 64)
expect 2 "merge without model" -- "$bin/moec-merge" --method average --keep 2 --text "$tmp/drama.txt" -o "$out/m"
expect_clean 2 "merge missing -o" "$out" -- "${mg[@]}" --method average --keep 2
expect_clean 2 "merge missing --method" "$out" -- "${mg[@]}" --keep 2 -o "$out/m"
expect_clean 2 "merge unknown method" "$out" -- "${mg[@]}" --method median --keep 2 -o "$out/m"
expect_clean 2 "merge missing --keep/--ratio" "$out" -- "${mg[@]}" --method average -o "$out/m"
expect_clean 2 "merge --keep and --ratio" "$out" -- "${mg[@]}" --method average --keep 2 --ratio 0.5 -o "$out/m"
expect_clean 2 "merge --keep 0" "$out" -- "${mg[@]}" --method average --keep 0 -o "$out/m"
expect_clean 2 "merge --ratio 1" "$out" -- "${mg[@]}" --method average --ratio 1 -o "$out/m"
expect_clean 2 "merge --energy 1.5" "$out" -- "${mg[@]}" --method submoe --keep 2 --energy 1.5 -o "$out/m"
expect_clean 2 "merge --rank with average" "$out" -- "${mg[@]}" --method average --keep 2 --rank 4 -o "$out/m"
expect_clean 2 "merge without calibration" "$out" -- "$bin/moec-merge" "$small" --method average --keep 2 -o "$out/m"
expect_clean 2 "merge --stats and --text" "$out" -- "${mg[@]}" --method average --keep 2 --stats "$tmp/none.json" \
  -o "$out/m"
expect_clean 1 "merge missing model" "$out" -- "$bin/moec-merge" "$tmp/none" --method average --keep 2 \
  --text "$tmp/drama.txt" -o "$out/m"
expect_clean 1 "merge truncated model" "$out" -- "$bin/moec-merge" "$tmp/trunc" --method average --keep 2 \
  --text "$tmp/drama.txt" -o "$out/m"
expect_clean 1 "merge corrupt .moec" "$out" -- "$bin/moec-merge" "$tmp/flip.moec" --method average --keep 2 \
  --text "$tmp/drama.txt" -o "$out/m"
expect_clean 1 "merge missing stats" "$out" -- "$bin/moec-merge" "$small" --method average --keep 2 \
  --stats "$tmp/none.json" -o "$out/m"
expect_clean 1 "merge missing text" "$out" -- "$bin/moec-merge" "$small" --method average --keep 2 \
  --text "$tmp/none.txt" -o "$out/m"
expect_clean 1 "merge --keep above the experts" "$out" -- "${mg[@]}" --method average --keep 99 -o "$out/m"
expect_clean 1 "merge output under a file" "$tmp" -- "${mg[@]}" --method average --keep 2 -o "$tmp/afile/m"
[ -n "$ro" ] && expect_clean 1 "merge read-only output directory" "$ro" -- "${mg[@]}" --method average --keep 2 \
  -o "$ro/m"
mkdir -p "$out/m"
expect_clean 1 "merge output exists" "$out" -- "${mg[@]}" --method average --keep 2 -o "$out/m"
rmdir "$out/m"
expect_clean 0 "merge ok" "$tmp" -- "${mg[@]}" --method average --keep 2 -o "$out/m"
[ -f "$out/m/config.json" ] || { echo "FAIL: merge ok wrote no config.json"; fails=$((fails + 1)); }
[ "$(ls -A "$out")" = m ] || { echo "FAIL: merge left temporaries"; ls -A "$out"; fails=$((fails + 1)); }
rm -rf "$out/m"

expect 2 "export without file" -- "$bin/moec-export" --hf "$out/e"
expect_clean 2 "export missing --hf" "$out" -- "$bin/moec-export" "$tmp/q.moec"
expect_clean 2 "export two files" "$out" -- "$bin/moec-export" "$tmp/q.moec" "$tmp/q.moec" --hf "$out/e"
expect_clean 2 "export bad dtype" "$out" -- "$bin/moec-export" "$tmp/q.moec" --hf "$out/e" --dtype f64
expect_clean 1 "export missing file" "$out" -- "$bin/moec-export" "$tmp/none.moec" --hf "$out/e"
expect_clean 1 "export corrupt .moec" "$out" -- "$bin/moec-export" "$tmp/flip.moec" --hf "$out/e"
expect_clean 1 "export truncated .moec" "$out" -- "$bin/moec-export" "$tmp/trunc.moec" --hf "$out/e"
expect_clean 1 "export truncated checkpoint" "$out" -- "$bin/moec-export" "$tmp/trunc" --hf "$out/e"
expect_clean 1 "export output under a file" "$tmp" -- "$bin/moec-export" "$tmp/q.moec" --hf "$tmp/afile/e"
[ -n "$ro" ] && expect_clean 1 "export read-only output directory" "$ro" -- "$bin/moec-export" "$tmp/q.moec" \
  --hf "$ro/e"
mkdir -p "$out/e"
printf 'mine\n' >"$out/e/notes.txt"
expect_clean 1 "export exists" "$out/e" -- "$bin/moec-export" "$tmp/q.moec" --hf "$out/e"
expect_clean 1 "export --force onto a non-model directory" "$out/e" -- "$bin/moec-export" "$tmp/q.moec" \
  --hf "$out/e" --force
rm -rf "$out/e"
expect_clean 0 "export ok" "$tmp" -- "$bin/moec-export" "$tmp/q.moec" --hf "$out/e" --dtype f32 --quiet
[ -f "$out/e/model.safetensors" ] || { echo "FAIL: export ok wrote no model.safetensors"; fails=$((fails + 1)); }
[ "$(ls -A "$out")" = e ] || { echo "FAIL: export left temporaries"; ls -A "$out"; fails=$((fails + 1)); }
[ -n "$ro" ] && chmod 755 "$ro"

# --text FILE...: the list form and the repeat form give the same result in
# every tool that reads text, and a list swallowing MODEL says so.
head -c 2500 "$src/data/corpus/c.val.txt" >"$tmp/t1.txt"
head -c 2500 "$src/data/corpus/python.val.txt" >"$tmp/t2.txt"
head -c 2500 "$src/data/corpus/scripture.val.txt" >"$tmp/t3.txt"
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
  expect 0 "prune --text ($form)" -- "$bin/moec-prune" "$small" --method freq --keep 2 "${args[@]}" --ctx 32 \
    -o "$tmp/prune-$form" --quiet
  expect 0 "merge --text ($form)" -- "$bin/moec-merge" "$small" --method average --keep 2 "${args[@]}" --ctx 32 \
    -o "$tmp/merge-$form" --quiet
  expect 0 "quant --text ($form)" -- "$bin/moec-quant" "$small" --method gptq --bits 4 "${args[@]}" --ctx 32 \
    --tokens 1024 --verify-tokens 0 -o "$tmp/quant-$form.moec" --json
  nosecs "$tmp/out"; mv "$tmp/out.ns" "$tmp/quant-$form.json"
done
for form in rept mixd; do
  same "calib ($form)" "$tmp/list.stats" "$tmp/$form.stats"
  same "eval ($form)" "$tmp/eval-list.json" "$tmp/eval-$form.json"
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
expect_clean 2 "quant unknown preset" "$out" -- "${q[@]}" --preset Q4_K_M -o "$out/x.moec"
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

echo "$pass passed, $fails failed"
[ "$fails" -eq 0 ]
