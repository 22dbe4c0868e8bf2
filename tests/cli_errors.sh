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

for tool in moec-inspect moec-run moec-eval moec-bench moec-tokenize; do
  expect 0 "$tool --help" -- "$bin/$tool" --help
  expect 2 "$tool bad option" -- "$bin/$tool" --no-such-option
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

echo "$pass passed, $fails failed"
[ "$fails" -eq 0 ]
