#!/usr/bin/env bash
# Files damaged by hand in ways no other test lists, through the real
# binaries: every one gives exactly one line on stderr and exit 1, never a
# crash, a hang or a sanitizer report (the suite runs under ASan + UBSan,
# which abort on any error).
#   tests/cli_corrupt.sh BIN_DIR SOURCE_DIR
set -u
bin=$1
src=$2
model=$src/tests/fixtures/qwen3moe-random
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
pass=0

# bad DESCRIPTION -- COMMAND...: exit 1, one line on stderr, within 60 s
bad() {
  local what=$1
  shift 2
  timeout 60 "$@" >"$tmp/out" 2>"$tmp/err" </dev/null
  local got=$?
  if [ "$got" -ne 1 ]; then
    echo "FAIL: $what: exit $got, expected 1"; head -c 2000 "$tmp/err"; fails=$((fails + 1)); return
  fi
  if [ "$(wc -l <"$tmp/err")" -ne 1 ]; then
    echo "FAIL: $what: expected one line on stderr"; head -c 2000 "$tmp/err"; fails=$((fails + 1)); return
  fi
  [ -n "${VERBOSE:-}" ] && echo "ok: $what: $(cat "$tmp/err")"
  pass=$((pass + 1))
}

# variant NAME: a copy of the fixture in $tmp/NAME to damage
variant() {
  rm -rf "${tmp:?}/$1"
  cp -r "$model" "$tmp/$1"
  echo "$tmp/$1"
}

# replaces bytes [OFF, OFF+len(HEX)) of FILE by the bytes of HEX
poke() { printf '%b' "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }

I=$bin/moec-inspect
T=$bin/moec-tokenize

# ---- safetensors ----
d=$(variant st_zero_len); poke "$d/model.safetensors" 0 '\x00\x00\x00\x00\x00\x00\x00\x00'
bad "safetensors header length 0" -- "$I" "$d"
d=$(variant st_nested)
python3 - "$d/model.safetensors" <<'EOF'
import struct, sys
h = b'{"a":' + b'[' * 5000 + b']' * 5000 + b'}'
open(sys.argv[1], 'wb').write(struct.pack('<Q', len(h)) + h)
EOF
bad "safetensors header nested 5000 deep" -- "$I" "$d"
d=$(variant st_offsets)
python3 - "$d/model.safetensors" <<'EOF'
import struct, sys
h = b'{"model.embed_tokens.weight":{"dtype":"BF16","shape":[4096,64],"data_offsets":[18446744073709551615,0]}}'
open(sys.argv[1], 'wb').write(struct.pack('<Q', len(h)) + h)
EOF
bad "safetensors offsets near 2^64" -- "$I" "$d"
d=$(variant st_dir); rm "$d/model.safetensors"; mkdir "$d/model.safetensors"
bad "model.safetensors is a directory" -- "$I" "$d"
d=$(variant st_fifo); rm "$d/model.safetensors"; mkfifo "$d/model.safetensors"
bad "model.safetensors is a FIFO (must not hang)" -- "$I" "$d"
d=$(variant st_nan)
python3 - "$d/model.safetensors" <<'EOF'
import json, struct, sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
n = struct.unpack('<Q', b[:8])[0]
t = json.loads(b[8:8 + n])['model.layers.1.mlp.experts.6.gate_proj.weight']
b[8 + n + t['data_offsets'][0] + 2 * 100: 8 + n + t['data_offsets'][0] + 2 * 101] = b'\xc0\x7f'  # BF16 NaN
open(p, 'wb').write(b)
EOF
head -c 2000 "$src/data/corpus/c.val.txt" >"$tmp/text.txt"
bad "eval of NaN weights names the tensor" -- "$bin/moec-eval" --model "$d" --text "$tmp/text.txt" --ctx 32
grep -q "experts.6.gate_proj.weight: NaN at \[1, 36\]" "$tmp/err" || { echo "FAIL: NaN not named: $(cat "$tmp/err")"; fails=$((fails + 1)); }
bad "quantizing NaN weights names the tensor" -- "$bin/moec-quant" "$d" --bits 4 -o "$tmp/nan.moec"
grep -q "experts.6.gate_proj.weight: NaN" "$tmp/err" || { echo "FAIL: NaN not named: $(cat "$tmp/err")"; fails=$((fails + 1)); }

# ---- sharded index ----
d=$(variant idx_escape); mv "$d/model.safetensors" "$tmp/outside.safetensors"
printf '{"weight_map": {"model.norm.weight": "../outside.safetensors"}}' >"$d/model.safetensors.index.json"
bad "index naming a shard outside the directory" -- "$I" "$d"
d=$(variant idx_self); mv "$d/model.safetensors" "$d/model-1.safetensors"
printf '{"weight_map": {"model.norm.weight": "model.safetensors.index.json"}}' >"$d/model.safetensors.index.json"
bad "index naming itself as a shard" -- "$I" "$d"

# ---- config.json ----
d=$(variant cfg_empty); : >"$d/config.json"
bad "empty config.json" -- "$I" "$d"
d=$(variant cfg_null); echo null >"$d/config.json"
bad "config.json holding null" -- "$I" "$d"
d=$(variant cfg_string); sed -i 's/"vocab_size": 4096/"vocab_size": "4096"/' "$d/config.json"
bad "vocab_size as a string" -- "$I" "$d"
d=$(variant cfg_headdim); sed -i 's/"head_dim": 32/"head_dim": -32/' "$d/config.json"
bad "negative head_dim" -- "$I" "$d"
d=$(variant cfg_topk); sed -i 's/"num_experts_per_tok": 2/"num_experts_per_tok": 0/' "$d/config.json"
bad "zero experts per token" -- "$I" "$d"
d=$(variant cfg_fifo); rm "$d/config.json"; mkfifo "$d/config.json"
bad "config.json is a FIFO (must not hang)" -- "$I" "$d"
d=$(variant cfg_loop); rm "$d/config.json"; ln -s config.json "$d/config.json"
bad "config.json is a symlink loop" -- "$I" "$d"
d=$(variant cfg_binary); head -c 3000 /dev/urandom >"$d/config.json"
bad "config.json of random bytes" -- "$I" "$d"

# ---- tokenizer.json ----
d=$(variant tok_cut); head -c 5000 "$model/tokenizer.json" >"$d/tokenizer.json"
bad "tokenizer.json cut short" -- "$T" "$d"
d=$(variant tok_type); sed -i '0,/"type": "BPE"/s//"type": 7/' "$d/tokenizer.json"
bad "tokenizer model type a number" -- "$T" "$d"
d=$(variant tok_added)
python3 - "$d/tokenizer.json" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))
t['added_tokens'] = [{"id": -5, "content": "<x>", "special": True}]
json.dump(t, open(sys.argv[1], 'w'))
EOF
bad "added token with a negative id" -- "$T" "$d"
d=$(variant tok_big)
python3 - "$d/tokenizer.json" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))
t['added_tokens'] = [{"id": 5000, "content": "<x>", "special": True}]
json.dump(t, open(sys.argv[1], 'w'))
EOF
bad "tokenizer knows ids the embedding lacks" -- "$bin/moec-run" "$d" -p hi -n 1
d=$(variant tok_dir); rm "$d/tokenizer.json"; mkdir "$d/tokenizer.json"
bad "tokenizer.json is a directory" -- "$T" "$d"
printf 'caf\xc3 \xff\n' >"$tmp/badutf8.txt"
bad "text that is not UTF-8" -- "$bin/moec-eval" --model "$model" --text "$tmp/badutf8.txt" --ctx 8
bad "text file is a directory" -- "$bin/moec-eval" --model "$model" --text "$tmp" --ctx 8

# ---- multiple-choice JSONL ----
printf '{"context": "a", "choices": [], "label": 0}\n' >"$tmp/mc1.jsonl"
bad "mc item without choices" -- "$bin/moec-eval" --model "$model" --mc "$tmp/mc1.jsonl"
printf '{"context": "a", "choices": ["b"], "label": 0}\n{"context": "a\0b", "choices": ["b"], "label": 0}\n' >"$tmp/mc2.jsonl"
bad "mc file with a NUL byte" -- "$bin/moec-eval" --model "$model" --mc "$tmp/mc2.jsonl"
printf '{"context": "a", "choices": ["b", 7], "label": 1e300}\n' >"$tmp/mc3.jsonl"
bad "mc label 1e300" -- "$bin/moec-eval" --model "$model" --mc "$tmp/mc3.jsonl"
printf '[1, 2, 3]\n' >"$tmp/mc4.jsonl"
bad "mc line not an object" -- "$bin/moec-eval" --model "$model" --mc "$tmp/mc4.jsonl"

# ---- .moec ----
"$bin/moec-quant" "$model" --bits 4 --quiet -o "$tmp/q.moec" >/dev/null 2>&1 || { echo "FAIL: quantization"; exit 1; }
size=$(stat -c %s "$tmp/q.moec")
head -c "$size" /dev/zero >"$tmp/zero.moec"
bad ".moec of zeros" -- "$I" "$tmp/zero.moec"
{ head -c 8 "$tmp/q.moec"; head -c 4000 /dev/urandom; } >"$tmp/magic.moec"
bad ".moec magic then noise" -- "$I" "$tmp/magic.moec"
cp "$tmp/q.moec" "$tmp/flip.moec"; poke "$tmp/flip.moec" $((size - 40)) '\x55'
bad ".moec with a flipped directory byte" -- "$I" "$tmp/flip.moec"
cp "$tmp/q.moec" "$tmp/mid.moec"; poke "$tmp/mid.moec" $((size / 2)) '\xaa\xbb'
bad ".moec with damaged tensor bytes" -- "$bin/moec-export" "$tmp/mid.moec" --hf "$tmp/mid-out"
[ ! -e "$tmp/mid-out" ] || { echo "FAIL: export of a damaged .moec left output"; fails=$((fails + 1)); }
head -c $((size - 1)) "$tmp/q.moec" >"$tmp/short.moec"
bad ".moec one byte short" -- "$I" "$tmp/short.moec"

# ---- statistics ----
"$bin/moec-calib" "$model" --text "$tmp/text.txt" --tokens 128 --ctx 32 --quiet -o "$tmp/s.stats" >/dev/null 2>&1 ||
  { echo "FAIL: calibration"; exit 1; }
: >"$tmp/empty.stats"
bad "empty statistics file" -- "$bin/moec-prune" "$model" --method freq --keep 4 --stats "$tmp/empty.stats" -o "$tmp/p1"
head -c 60 "$tmp/s.stats" >"$tmp/cut.stats"
bad "statistics cut in the header" -- "$bin/moec-prune" "$model" --method freq --keep 4 --stats "$tmp/cut.stats" -o "$tmp/p2"
cp "$tmp/s.stats" "$tmp/flip.stats"; poke "$tmp/flip.stats" 200 '\x01'
bad "statistics with a flipped payload byte" -- "$bin/moec-prune" "$model" --method freq --keep 4 \
  --stats "$tmp/flip.stats" -o "$tmp/p3"
cp "$tmp/q.moec" "$tmp/notstats.stats"
bad "a .moec given as statistics" -- "$bin/moec-merge" "$model" --method average --keep 4 \
  --stats "$tmp/notstats.stats" -o "$tmp/p4"
[ -z "$(ls -d "$tmp"/p[1-4]* 2>/dev/null)" ] || { echo "FAIL: outputs left behind"; fails=$((fails + 1)); }

echo "cli_corrupt: $pass passed, $fails failed"
[ "$fails" -eq 0 ]
