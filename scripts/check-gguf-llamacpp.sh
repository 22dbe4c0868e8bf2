#!/usr/bin/env bash
# Checks moec's GGUF export against llama.cpp itself, for the four
# architectures (Mixtral as "llama", Qwen2-MoE, Qwen3-MoE, OLMoE) and both
# tokenizer families:
#  1. logits: tests/llamacpp/gguf_logits.c, built here against llama.cpp's
#     libllama, runs moec's executor and llama.cpp (F32 weights and KV cache,
#     no flash attention) on the same 128 tokens of text; the largest logit
#     difference relative to the largest logit must stay below 1e-4 (measured
#     ~1e-6, the fixtures' reference tolerance is 1e-3);
#  2. tokenization: llama-tokenize (--no-bos --no-escape) of every
#     data/corpus text must equal moec-tokenize's, token for token;
#  3. quantized files load and run: a Q4_K_M preset (RTN, no calibration)
#     and a group-wise 8-bit file carried as Q8_0 go through
#     llama-perplexity.
# The SentencePiece family is checked on a copy of mixtral-tiny carrying
# tests/data/tokenizer_sp.json.
#
#   scripts/check-gguf-llamacpp.sh        # tools from build/bin (Release)
#
# Environment: BIN (default build/bin), BUILD (the CMake build holding
# libmoec.a, default build), LLAMA (llama.cpp source tree with build/bin,
# default ~/.cache/moec-peer/llama.cpp), WORK (scratch, removed unless
# KEEP_WORK=1). Exits 1 on the first failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
BIN=${BIN:-build/bin}
BUILD=${BUILD:-build}
LLAMA=${LLAMA:-$HOME/.cache/moec-peer/llama.cpp}
LB=$LLAMA/build/bin
log() { echo "check-gguf: $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
for t in moec-export moec-tokenize moec-quant; do [ -x "$BIN/$t" ] || fail "$BIN/$t not found"; done
[ -f "$BUILD/libmoec.a" ] || fail "$BUILD/libmoec.a not found"
for t in llama-tokenize llama-perplexity; do [ -x "$LB/$t" ] || fail "$LB/$t not found (set LLAMA)"; done
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
[ "${KEEP_WORK:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT

log "building gguf_logits against $LB"
# shellcheck disable=SC2046
cc -O2 -std=c11 -D_GNU_SOURCE -I lib -I . -I "$LLAMA/include" -I "$LLAMA/ggml/include" tests/llamacpp/gguf_logits.c \
  "$BUILD/libmoec.a" -L "$LB" -Wl,-rpath,"$LB" -lllama -lggml -lggml-base \
  $(pkg-config --libs openblas lapacke libzstd libcjson libpcre2-8 libutf8proc libxxhash) -lglpk -lpthread -lm \
  -o "$WORK/gguf_logits"

mkdir -p "$WORK/mixtral-sp"
cp models/mixtral-tiny/config.json models/mixtral-tiny/model.safetensors "$WORK/mixtral-sp/"
cp tests/data/tokenizer_sp.json "$WORK/mixtral-sp/tokenizer.json"

models=(models/mixtral-tiny tests/fixtures/qwen2moe-random tests/fixtures/qwen3moe-random tests/fixtures/olmoe-random
        "$WORK/mixtral-sp")
for m in "${models[@]}"; do
  n=$(basename "$m")
  g="$WORK/$n.gguf"
  "$BIN/moec-export" "$m" --gguf "$g" --type f32 --force --json >"$WORK/$n.json" 2>/dev/null ||
    fail "$n: moec-export --gguf failed"
  arch=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["arch"], j["tokenizer"])' "$WORK/$n.json")
  r=$("$WORK/gguf_logits" "$m" "$g" data/corpus/drama.val.txt 128 2>/dev/null) || fail "$n: llama.cpp could not run it"
  rel=$(echo "$r" | awk '{print $2}')
  python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) < 1e-4 else 1)" "$rel" ||
    fail "$n: logits differ by $rel of the largest logit"
  for f in data/corpus/*.txt; do
    [ "${f%.jsonl}" = "$f" ] || continue
    "$LB/llama-tokenize" -m "$g" -f "$f" --ids --no-bos --no-escape --log-disable 2>/dev/null | tr -d '[],' |
      tr -s ' ' '\n' | grep -v '^$' >"$WORK/ll.txt"
    "$BIN/moec-tokenize" "$m" <"$f" | tr -s ' ' '\n' | grep -v '^$' >"$WORK/mo.txt"
    cmp -s "$WORK/ll.txt" "$WORK/mo.txt" || fail "$n: llama-tokenize and moec-tokenize differ on $f"
  done
  log "$n ($arch): logits within $rel of the largest, tokenization of data/corpus/*.txt identical"
done

log "quantized files in llama.cpp"
head -c 20000 data/corpus/drama.val.txt >"$WORK/short.txt"
for m in models/mixtral-tiny tests/fixtures/olmoe-random; do
  n=$(basename "$m")
  "$BIN/moec-quant" "$m" --preset Q4_K_M --quiet --force --verify-tokens 0 -o "$WORK/$n-q4km.moec"
  "$BIN/moec-export" "$WORK/$n-q4km.moec" --gguf "$WORK/$n-q4km.gguf" --force --quiet
  "$BIN/moec-quant" "$m" --bits 8 --group 32 --sym --attn --quiet --force --verify-tokens 0 -o "$WORK/$n-q8.moec"
  "$BIN/moec-export" "$WORK/$n-q8.moec" --gguf "$WORK/$n-q8.gguf" --force --quiet
  for v in q4km q8; do
    # llama.cpp's logging thread can lose the last lines at exit (exit 0, no
    # summary; seen under load): three tries
    for try in 1 2 3; do
      "$LB/llama-perplexity" -m "$WORK/$n-$v.gguf" -f "$WORK/short.txt" -c 128 -b 128 -t 2 >"$WORK/lp.log" 2>&1 ||
        fail "$n $v: llama-perplexity failed (see $WORK/lp.log)"
      grep -q "Final estimate" "$WORK/lp.log" && break
    done
    grep -q "Final estimate" "$WORK/lp.log" || fail "$n $v: no perplexity in three runs"
  done
  log "$n: Q4_K_M preset and carried Q8_0 files run in llama-perplexity"
done
log "all checks passed"
