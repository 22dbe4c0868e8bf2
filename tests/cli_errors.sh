#!/usr/bin/env bash
# Exit codes and one-line errors of the real binaries: usage errors exit 2,
# failures exit 1 with one line on stderr, never a crash or a partial output.
set -u
bin=$1
src=$2
model=$src/models/mixtral-tiny
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
. "$src/tests/cli_expect.sh"

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

# Every tool: --help exits 0 on stdout (--version: cli_version.sh), an unknown
# option or a missing value exits 2, and the common options read the same
# everywhere.
all_tools=(moec-inspect moec-run moec-tokenize moec-eval moec-bench moec-calib moec-prune moec-merge moec-quant
           moec-export)
for tool in "${all_tools[@]}"; do
  expect 0 "$tool --help" -- "$bin/$tool" --help
  head -1 "$tmp/out" | grep -q "^usage: $tool " || { echo "FAIL: $tool --help: no usage line"; fails=$((fails + 1)); }
  cp "$tmp/out" "$tmp/help-$tool"
  expect 2 "$tool bad option" -- "$bin/$tool" --no-such-option
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
done
expect 2 "--threads x" -- "$bin/moec-calib" "$model" --threads x
expect 2 "--threads without a value" -- "$bin/moec-quant" "$model" --threads
expect 2 "--help=x" -- "$bin/moec-eval" --help=x
expect 0 "-h" -- "$bin/moec-quant" -h
cmp -s "$tmp/out" "$tmp/help-moec-quant" || { echo "FAIL: -h is not --help"; fails=$((fails + 1)); }
expect 2 "an abbreviated option" -- "$bin/moec-prune" --hel
expect 2 "--quiet=1" -- "$bin/moec-run" "$model" --quiet=1
grep -q "takes no value" "$tmp/err" || { echo "FAIL: --quiet=1: $(cat "$tmp/err")"; fails=$((fails + 1)); }
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

# GGUF export and llama.cpp grids: usage errors exit 2, failures one line
# and no output file (q.moec is 4-bit in groups of 128: no llama.cpp type)
g=("$bin/moec-export" "$tmp/q.moec")
gout=$tmp/gguf
mkdir -p "$gout"
expect_clean 2 "export --gguf with --hf" "$gout" -- "${g[@]}" --gguf "$gout/x.gguf" --hf "$gout/e"
expect_clean 2 "export --gguf bad type" "$gout" -- "${g[@]}" --gguf "$gout/x.gguf" --type q3_k_s
expect_clean 2 "export --type without --gguf" "$gout" -- "${g[@]}" --hf "$gout/e" --type f16
expect_clean 1 "export --gguf groups of 128 as q4_k" "$gout" -- "${g[@]}" --gguf "$gout/x.gguf" --type q4_k
expect_clean 1 "export --gguf corrupt .moec" "$gout" -- "$bin/moec-export" "$tmp/flip.moec" --gguf "$gout/x.gguf"
expect_clean 1 "export --gguf truncated checkpoint" "$gout" -- "$bin/moec-export" "$tmp/trunc" --gguf "$gout/x.gguf"
expect_clean 1 "export --gguf under a file" "$tmp" -- "${g[@]}" --gguf "$tmp/afile/x.gguf"
expect_clean 0 "export --gguf dequantized to f32" "$tmp" -- "${g[@]}" --gguf "$gout/x.gguf" --type f32
[ -s "$gout/x.gguf" ] || { echo "FAIL: export --gguf wrote nothing"; fails=$((fails + 1)); }
grep -q "written dequantized.*--preset" "$tmp/err" ||
  { echo "FAIL: export --gguf dequantized: no note on how to keep the codes"; cat "$tmp/err"; fails=$((fails + 1)); }
expect_clean 1 "export --gguf exists" "$gout" -- "${g[@]}" --gguf "$gout/x.gguf"
expect_clean 2 "quant --grid unknown" "$out" -- "${q[@]}" --grid q4_k_m -o "$out/x.moec"
expect_clean 2 "quant --preset unknown" "$out" -- "${q[@]}" --preset Q7_K -o "$out/x.moec"
expect_clean 2 "quant --preset with --grid" "$out" -- "${q[@]}" --preset Q4_K_M --grid q4_k -o "$out/x.moec"
expect_clean 2 "quant --grid with --avg-bits" "$out" -- "${q[@]}" --grid q4_k --avg-bits 2.5 -o "$out/x.moec"
expect_clean 2 "quant --embed-grid without --grid" "$out" -- "${q[@]}" --bits 4 --embed-grid q8_0 -o "$out/x.moec"
expect_clean 1 "quant --preset on expert rows of 48" "$out" -- "$bin/moec-quant" "$src/tests/fixtures/qwen3moe-random" \
  --preset Q4_K_M --quiet --verify-tokens 0 -o "$out/x.moec"
expect_clean 0 "quant --preset Q4_K_M" "$tmp" -- "${q[@]}" --preset Q4_K_M -o "$gout/p.moec"
expect_clean 0 "export --gguf of the preset" "$tmp" -- "$bin/moec-export" "$gout/p.moec" --gguf "$gout/p.gguf" --json
if ! grep -q '"verbatim_tensors":[[:space:]]*64' "$tmp/out"; then
  echo "FAIL: export --gguf of the preset did not copy its 64 quantized tensors as blocks"; cat "$tmp/out"
  fails=$((fails + 1))
fi
expect_clean 0 "quant --grid q4_1 --attn" "$tmp" -- "${q[@]}" --grid q4_1 --attn --embed-grid q8_0 -o "$gout/g.moec"

[ -n "$ro" ] && chmod 755 "$ro"

echo "$pass passed, $fails failed"
[ "$fails" -eq 0 ]
