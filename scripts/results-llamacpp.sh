#!/usr/bin/env bash
# Regenerates docs/results/llama-cpp.md: moec's quantized mixtral-tiny beside
# llama.cpp's k-quants of the same model, both measured by llama.cpp itself.
#
# Each moec setting is quantized by moec-quant, dequantized to an F32 HF
# checkpoint by moec-export and converted to GGUF F32, so llama-perplexity
# computes exactly what moec's container holds; the k-quants come from
# llama-quantize on the F32 GGUF of the original. Every model is scored by
# `llama-perplexity --kl-divergence` against the F32 original on the four
# corpus/*.val.txt concatenated (baselines.md's convention: 312 windows of
# 256, second half of each scored). moec-eval --score-from half on the same
# text gives moec's own figure for the same .moec file, as a cross-check of
# executor and export. Speed: llama-bench on each GGUF beside moec-bench on
# each .moec, one after the other at the end, same threads.
#
#   scripts/results-llamacpp.sh         # tools from build/bin (Release)
#
# Needs llama.cpp (built by ../shared/tools/llama-peer.sh, about 15 minutes
# the first time; set PEER to its path elsewhere) and /usr/bin/python3 with
# numpy for its GGUF converter. Environment: BIN (default build/bin),
# THREADS (default 2), TOKENS (calibration tokens, default 32768), WORK
# (scratch directory, removed at the end unless KEEP_WORK=1), ONLY="name ..."
# (run only these moec settings). Benchmarks run with OPENBLAS_CORETYPE and
# OPENBLAS_L2_SIZE unset, as the README's figures.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
BIN=${BIN:-build/bin}
THREADS=${THREADS:-2}
TOKENS=${TOKENS:-32768}
PEER=${PEER:-$root/../shared/tools/llama-peer.sh}
MODEL=models/mixtral-tiny
CORPUS=data/corpus
OUT=docs/results/llama-cpp.md
ONLY=${ONLY:-}
log() { echo "results-llamacpp: $*" >&2; }
for t in moec-quant moec-export moec-eval moec-bench; do
  [ -x "$BIN/$t" ] || { log "$BIN/$t not found (build Release into build/ or set BIN)"; exit 1; }
done
[ -x "$PEER" ] || { log "$PEER not found (set PEER to llama-peer.sh)"; exit 1; }
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
[ "${KEEP_WORK:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT

log "llama.cpp and the k-quant GGUFs (llama-peer.sh)"
mapfile -t peer < <("$PEER" "$root/$MODEL")
LB=${peer[0]}
HF2GGUF=$(dirname "$PEER")/hf2gguf.py
gguf() { printf '%s\n' "${peer[@]:1}" | grep -- "-$1.gguf\$"; }
nobench=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)

cat "$CORPUS"/{drama,scripture,python,c}.val.txt >"$WORK/val.txt"
lp=("$LB/llama-perplexity" -f "$WORK/val.txt" -c 256 -b 256 -t "$THREADS")
if [ ! -s "$WORK/base.kld" ]; then
  log "llama-perplexity: base logits from the F32 GGUF"
  "${lp[@]}" -m "$(gguf f32)" --kl-divergence-base "$WORK/base.kld" >"$WORK/lp-base.log" 2>&1
fi
# kld NAME GGUF: llama-perplexity's figures for one model against the base
# (repeated, three times at most, when llama.cpp's logging thread lost the
# summary at exit)
kld() {
  local try
  for try in 1 2 3; do
    "${lp[@]}" -m "$2" --kl-divergence-base "$WORK/base.kld" --kl-divergence >"$WORK/lp-$1.log" 2>&1 ||
      { log "llama-perplexity failed on $2 (see $WORK/lp-$1.log)"; exit 1; }
    grep -q "Mean    KLD" "$WORK/lp-$1.log" && return 0
  done
  log "llama-perplexity printed no KLD for $2 (see $WORK/lp-$1.log)"; exit 1
}

for q in Q8_0 Q4_K_M Q3_K_M Q2_K; do
  log "llama.cpp $q"
  kld "$q" "$(gguf "$q")"
  stat -c %s "$(gguf "$q")" >"$WORK/size-$q"
done

train=()
for d in drama scripture python c; do train+=(--text "$CORPUS/$d.train.txt"); done
cal=("${train[@]}" --tokens "$TOKENS")
moec_runs=()
# run NAME -- moec-quant arguments...
run() {
  local name=$1
  shift 2
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  log "moec $name"
  local m="$WORK/$name.moec"
  "$BIN/moec-quant" "$MODEL" "$@" --threads "$THREADS" --quiet --json --force -o "$m" >"$WORK/quant-$name.json"
  "$BIN/moec-export" "$m" --hf "$WORK/$name-hf" --dtype f32 --force --quiet
  /usr/bin/python3 "$HF2GGUF" "$WORK/$name-hf" "$WORK/$name.gguf" f32 >/dev/null
  rm -rf "$WORK/$name-hf"
  kld "$name" "$WORK/$name.gguf"
  rm -f "$WORK/$name.gguf"
  "$BIN/moec-eval" --model "$m" --base "$MODEL" --text "$WORK/val.txt" --ctx 256 --score-from half \
    --threads "$THREADS" --json --quiet >"$WORK/eval-$name.json"
  moec_runs+=("$name")
}
run q8-g64 -- --method rtn --bits 8 --group 64 --attn --embed-bits 8
run gptq4-g64-e8 -- --method gptq --bits 4 --group 64 --attn --embed-bits 8 "${cal[@]}"
run gptq3-g64-e8 -- --method gptq --bits 3 --group 64 --attn --embed-bits 8 "${cal[@]}"
mix=(--method gptq --bits 4 --group 64 --attn --embed-bits 8 --bit-choices 1,2,3,4 --alloc mcmoe "${cal[@]}")
run mix2.5-mcmoe -- "${mix[@]}" --avg-bits 2.5
run mix2.0-mcmoe-eaq -- "${mix[@]}" --avg-bits 2.0 --eaquant

log "speed: llama-bench and moec-bench"
for q in f16 Q8_0 Q4_K_M Q3_K_M Q2_K; do
  "${nobench[@]}" "$LB/llama-bench" -m "$(gguf "$q")" -t "$THREADS" -p 512 -n 128 -o json >"$WORK/lb-$q.json" 2>/dev/null
done
"${nobench[@]}" "$BIN/moec-bench" "$MODEL" --threads "$THREADS" --reps 5 --json >"$WORK/bench-base.json"
for name in "${moec_runs[@]}"; do
  "${nobench[@]}" "$BIN/moec-bench" "$WORK/$name.moec" --threads "$THREADS" --reps 5 --json >"$WORK/bench-$name.json"
done
[ "${KEEP_WORK:-0}" = 1 ] || for name in "${moec_runs[@]}"; do rm -f "$WORK/$name.moec"; done

log "writing $OUT"
/usr/bin/python3 - "$WORK" "$OUT" "$(nproc)" "$(uptime)" <<'PY'
import json, os, re, sys

work, out, nproc, load = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].strip()
PARAMS = 15476992


def lp(name):
    t = open(os.path.join(work, f"lp-{name}.log"), errors="replace").read()
    g = lambda pat: float(re.search(pat, t).group(1))
    return {"kld": g(r"Mean\s+KLD:\s+([-0-9.]+)"), "top1": g(r"Same top p:\s+([0-9.]+)") / 100,
            "pplr": g(r"Mean PPL\(Q\)/PPL\(base\)\s+:\s+([0-9.]+)")}


def js(name):
    p = os.path.join(work, name)
    return json.load(open(p)) if os.path.exists(p) else None


def lb(q):
    rows = js(f"lb-{q}.json") or []
    r = {("pp" if x["n_prompt"] else "tg"): x["avg_ts"] for x in rows}
    return r.get("pp"), r.get("tg")


kq = [("Q8_0", "q8-g64"), ("Q4_K_M", "gptq4-g64-e8"), ("Q3_K_M", "gptq3-g64-e8"), ("Q2_K", "mix2.5-mcmoe"),
      (None, "mix2.0-mcmoe-eaq")]
labels = {
    "q8-g64": "RTN 8-bit g64, all linear layers, embeddings and head",
    "gptq4-g64-e8": "GPTQ 4-bit g64 (attention + experts), embeddings and head RTN 8-bit",
    "gptq3-g64-e8": "GPTQ 3-bit g64 (attention + experts), embeddings and head RTN 8-bit",
    "mix2.5-mcmoe": "MC-MoE 2.5 average expert bits from {1,2,3,4}, attention GPTQ 4-bit, embeddings and head 8-bit",
    "mix2.0-mcmoe-eaq": "MC-MoE 2.0 average expert bits + EAQuant, attention GPTQ 4-bit, embeddings and head 8-bit",
}
L = []
w = L.append
w("# moec beside llama.cpp on mixtral-tiny")
w("")
w("Generated by `scripts/results-llamacpp.sh`; do not edit by hand.")
w("")
w("Both sides are measured by llama.cpp: every moec setting is quantized by `moec-quant`, dequantized by "
  "`moec-export --dtype f32` and converted to a GGUF F32, so `llama-perplexity --kl-divergence` scores exactly "
  "the weights moec's container holds; llama.cpp's k-quants are `llama-quantize` of the F32 GGUF of the "
  "original. Text: the four `corpus/*.val.txt` concatenated (drama, scripture, python, c), `-c 256`: 312 "
  "windows, the second half of each scored (baselines.md's convention). KLD = mean KL(F32 original ‖ model) in "
  "nats; top-1 = llama.cpp's \"same top p\"; bpw over the file = file bytes × 8 / 15,476,992 parameters. "
  "`moec-eval KLD` is moec's own evaluation of the `.moec` file on the same text "
  "(`moec-eval --score-from half`): it should match llama.cpp's figure for the exported model.")
w("")
w("| model | bpw file | file MiB | KLD (llama-perplexity) | PPL ratio | top-1 | moec-eval KLD |")
w("|---|---|---|---|---|---|---|")
for q, m in kq:
    if q is not None and os.path.exists(os.path.join(work, f"lp-{q}.log")):
        size = int(open(os.path.join(work, f"size-{q}")).read())
        r = lp(q)
        w(f"| llama.cpp {q} | {8 * size / PARAMS:.2f} | {size / 2**20:.2f} | {r['kld']:.4f} | {r['pplr']:.4f} | "
          f"{100 * r['top1']:.1f}% | — |")
    qj, ej = js(f"quant-{m}.json"), js(f"eval-{m}.json")
    if qj and ej:
        r = lp(m)
        w(f"| moec `{m}`: {labels[m]} | {qj['bpw_file']:.2f} | {qj['file_bytes'] / 2**20:.2f} | **{r['kld']:.4f}** | "
          f"{r['pplr']:.4f} | {100 * r['top1']:.1f}% | {ej['kld_mean']:.4f} |")
w("")
w(f"## Speed ({nproc} cores, `-t`/`--threads` from THREADS, OpenBLAS variables unset; load at the end: `{load}`)")
w("")
w("llama-bench (`-p 512 -n 128`, mean of its 5 repetitions) and moec-bench (`--reps 5`, median), tokens/s. "
  "The machine is shared; compare within this table only.")
w("")
w("| model | prompt 512 tok/s | decode 128 tok/s |")
w("|---|---|---|")
for q in ["f16", "Q8_0", "Q4_K_M", "Q3_K_M", "Q2_K"]:
    pp, tg = lb(q)
    if pp:
        w(f"| llama.cpp {q} | {pp:.0f} | {tg:.0f} |")
b = js("bench-base.json")
w(f"| moec original (BF16) | {b['pp512_tps']:.0f} | {b['tg128_tps']:.0f} |")
for _, m in kq:
    b = js(f"bench-{m}.json")
    if b:
        w(f"| moec `{m}` | {b['pp512_tps']:.0f} | {b['tg128_tps']:.0f} |")
w("")
open(out, "w").write("\n".join(L))
PY
log "done"
