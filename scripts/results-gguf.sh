#!/usr/bin/env bash
# Regenerates docs/results/gguf.md: moec's quantization written in
# llama.cpp's own types (moec-quant --preset, moec-export --gguf) against
# llama-quantize's files of the same types, without and with an importance
# matrix, all measured by llama.cpp itself.
#
# Per model (mixtral-tiny, then qwen3moe-fine, a model issue 12 does not
# name):
#  - the F32 original: moec-export --gguf --type f32 (scripts/check-gguf-
#    llamacpp.sh checks that llama.cpp computes what moec does from it);
#  - the calibration text: the windows moec-quant calibrates on (32768 tokens
#    of the four corpus/*.train.txt, whole windows of 256 spread through each
#    file, round-robin), decoded to text, so llama-imatrix (-c 256) sees the
#    same text and token budget;
#  - for each preset P: llama-quantize F32 -> P, llama-quantize --imatrix
#    F32 -> P, and moec-quant --preset P --method gptq on the same
#    calibration, exported by moec-export --gguf (blocks copied as they are);
#  - llama-perplexity --kl-divergence of each against the F32 original on the
#    four corpus/*.val.txt concatenated (-c 256: 312 windows, second half of
#    each scored, as scripts/results-llamacpp.sh); file bytes; llama-bench
#    (-p 512 -n 128) of llama-quantize's and moec's file, one after the other;
#  - the group-wise carry: moec's own 4-bit-with-zeros and 8-bit symmetric
#    groups of 32 (GPTQ), exported as Q4_1 / Q8_0 with their codes carried
#    over, scored by llama-perplexity and by moec-eval on the .moec.
#
#   scripts/results-gguf.sh              # tools from build/bin (Release)
#
# First, scripts/check-gguf-llamacpp.sh: llama.cpp loads moec's GGUFs of the
# four architectures and both tokenizer families and computes the same
# logits and tokens (its summary goes on the page).
#
# Needs llama.cpp's tools (LLAMA, default ~/.cache/moec-peer/llama.cpp, built
# by ../shared/tools/llama-peer.sh) and python3. Environment: BIN (default
# build/bin), BUILD (the CMake build with libmoec.a, for the check; default
# build), THREADS (2), TOKENS (32768), WORK (scratch, removed unless
# KEEP_WORK=1), MODELS ("name=path ..."), PRESETS (default "Q4_K_M Q3_K_M
# Q2_K"), LEGACY (presets run on the first model only, default "Q8_0 Q5_1
# Q4_1 Q4_0"), NOBENCH=1 skips llama-bench. Benchmarks run with
# OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset. Steps whose outputs exist in
# WORK are not redone (KEEP_WORK=1 WORK=dir resumes a run).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
BIN=${BIN:-build/bin}
THREADS=${THREADS:-2}
TOKENS=${TOKENS:-32768}
LLAMA=${LLAMA:-$HOME/.cache/moec-peer/llama.cpp}
LB=$LLAMA/build/bin
MODELS=${MODELS:-"mixtral-tiny=models/mixtral-tiny qwen3moe-fine=../shared/fixtures/qwen3moe-fine"}
PRESETS=${PRESETS:-"Q4_K_M Q3_K_M Q2_K"}
LEGACY=${LEGACY:-"Q8_0 Q5_1 Q4_1 Q4_0"}
CORPUS=data/corpus
OUT=docs/results/gguf.md
log() { echo "results-gguf: $*" >&2; }
for t in moec-quant moec-export moec-eval moec-tokenize moec-inspect; do
  [ -x "$BIN/$t" ] || { log "$BIN/$t not found (build Release into build/ or set BIN)"; exit 1; }
done
for t in llama-perplexity llama-quantize llama-imatrix llama-bench; do
  [ -x "$LB/$t" ] || { log "$LB/$t not found (set LLAMA)"; exit 1; }
done
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
[ "${KEEP_WORK:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
nobench=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)
cat "$CORPUS"/{drama,scripture,python,c}.val.txt >"$WORK/val.txt"
train=()
for d in drama scripture python c; do train+=("$CORPUS/$d.train.txt"); done
texts=()
for f in "${train[@]}"; do texts+=(--text "$f"); done

# kld TAG GGUF: llama-perplexity against the model's base logits. Its log
# goes through a logging thread that can lose the last lines at exit (seen
# here under load: exit 0, no summary), so a run without the summary is
# repeated, three times at most.
kld() {
  local try
  for try in 1 2 3; do
    [ -s "$WORK/lp-$1.log" ] && grep -q "Mean    KLD" "$WORK/lp-$1.log" && return 0
    "$LB/llama-perplexity" -m "$2" -f "$WORK/val.txt" -c 256 -b 256 -t "$THREADS" --kl-divergence-base "$base" \
      --kl-divergence >"$WORK/lp-$1.log" 2>&1 || { log "llama-perplexity failed on $2 (see $WORK/lp-$1.log)"; exit 1; }
  done
  grep -q "Mean    KLD" "$WORK/lp-$1.log" || { log "llama-perplexity printed no KLD for $2 (see $WORK/lp-$1.log)"; exit 1; }
}

if ! grep -q "all checks passed" "$WORK/check-gguf.log" 2>/dev/null; then
  log "llama.cpp on moec's GGUFs of the four architectures: scripts/check-gguf-llamacpp.sh"
  BIN=$BIN BUILD=${BUILD:-build} LLAMA=$LLAMA bash scripts/check-gguf-llamacpp.sh >"$WORK/check-gguf.log" 2>&1 ||
    { log "scripts/check-gguf-llamacpp.sh failed (see $WORK/check-gguf.log)"; exit 1; }
fi

first=1
for entry in $MODELS; do
  name=${entry%%=*}
  model=${entry#*=}
  W="$WORK/$name"
  mkdir -p "$W"
  f32="$W/f32.gguf"
  base="$W/base.kld"
  log "$name: F32 GGUF and base logits"
  [ -s "$f32" ] || "$BIN/moec-export" "$model" --gguf "$f32" --type f32 --force --quiet
  "$BIN/moec-inspect" "$model" --json >"$W/inspect.json"
  [ -s "$base" ] || "$LB/llama-perplexity" -m "$f32" -f "$WORK/val.txt" -c 256 -b 256 -t "$THREADS" \
    --kl-divergence-base "$base" >"$W/lp-base.log" 2>&1
  if [ ! -s "$W/imatrix.gguf" ]; then
    log "$name: calibration text and llama-imatrix"
    python3 - "$BIN/moec-tokenize" "$model" "$TOKENS" 256 "$W/calib.txt" "${train[@]}" <<'PY'
# The windows moec_quant_windows_from_text (quant/recipe.c) takes, decoded.
import subprocess, sys
tok, model, tokens, ctx, out, files = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6:]
ids = [list(map(int, subprocess.run([tok, model], stdin=open(f, 'rb'), capture_output=True, check=True).stdout.split()))
       for f in files]
quota, nwin, nfull = tokens // len(files), [], []
for t in ids:
    nf = len(t) // ctx
    if quota >= len(t) or nf == 0:
        nwin.append((len(t) + ctx - 1) // ctx); nfull.append(0)
    else:
        nwin.append(min((quota + ctx - 1) // ctx, nf)); nfull.append(nf)
wins = []
for r in range(max(nwin)):
    for f, t in enumerate(ids):
        if r < nwin[f]:
            start = (r * nfull[f] // nwin[f]) * ctx if nfull[f] else r * ctx
            wins.append(t[start:start + ctx])
with open(out, 'w', encoding='utf-8') as fo:
    for w in wins:
        fo.write(subprocess.run([tok, model, '--decode'], input=' '.join(map(str, w)).encode(),
                                capture_output=True, check=True).stdout.decode('utf-8'))
PY
    "$LB/llama-imatrix" -m "$f32" -f "$W/calib.txt" -c 256 -b 256 -t "$THREADS" -o "$W/imatrix.gguf" \
      >"$W/imatrix.log" 2>&1 || { log "llama-imatrix failed (see $W/imatrix.log)"; exit 1; }
  fi
  runs="$PRESETS"
  [ "$first" = 1 ] && runs="$runs $LEGACY"
  for P in $runs; do
    log "$name $P: llama-quantize (without and with the importance matrix) and moec-quant --preset"
    [ -s "$W/llama-$P.gguf" ] || "$LB/llama-quantize" "$f32" "$W/llama-$P.gguf" "$P" "$THREADS" >"$W/lq-$P.log" 2>&1
    [ -s "$W/imat-$P.gguf" ] || "$LB/llama-quantize" --imatrix "$W/imatrix.gguf" "$f32" "$W/imat-$P.gguf" "$P" \
      "$THREADS" >"$W/lqi-$P.log" 2>&1
    if [ ! -s "$W/moec-$P.gguf" ]; then
      "$BIN/moec-quant" "$model" --preset "$P" --method gptq "${texts[@]}" --tokens "$TOKENS" --threads "$THREADS" \
        --quiet --json --force -o "$W/moec-$P.moec" >"$W/quant-$P.json"
      "$BIN/moec-export" "$W/moec-$P.moec" --gguf "$W/moec-$P.gguf" --force --json --quiet >"$W/export-$P.json"
      rm -f "$W/moec-$P.moec"
    fi
    for v in llama imat moec; do
      kld "$name-$v-$P" "$W/$v-$P.gguf"
      stat -c %s "$W/$v-$P.gguf" >"$W/size-$v-$P"
    done
  done
  if [ "$first" = 1 ]; then
    for c in "q4_1:--bits 4 --group 32" "q8_0:--bits 8 --group 32 --sym"; do
      tag=${c%%:*}
      read -r -a args <<<"${c#*:}"
      log "$name: group-wise $tag carried"
      if [ ! -s "$W/carry-$tag.gguf" ]; then
        "$BIN/moec-quant" "$model" "${args[@]}" --attn --method gptq "${texts[@]}" --tokens "$TOKENS" \
          --threads "$THREADS" --quiet --json --force -o "$W/carry-$tag.moec" >"$W/cquant-$tag.json"
        "$BIN/moec-export" "$W/carry-$tag.moec" --gguf "$W/carry-$tag.gguf" --force --json --quiet \
          >"$W/cexport-$tag.json"
        "$BIN/moec-eval" --model "$W/carry-$tag.moec" --base "$model" --text "$WORK/val.txt" --ctx 256 \
          --score-from half --threads "$THREADS" --json --quiet >"$W/ceval-$tag.json"
        rm -f "$W/carry-$tag.moec"
      fi
      kld "$name-carry-$tag" "$W/carry-$tag.gguf"
      stat -c %s "$W/carry-$tag.gguf" >"$W/size-carry-$tag"
    done
  fi
  if [ "${NOBENCH:-0}" != 1 ]; then
    for P in $runs; do
      for v in llama moec; do
        [ -s "$W/lb-$v-$P.json" ] || "${nobench[@]}" "$LB/llama-bench" -m "$W/$v-$P.gguf" -t "$THREADS" -p 512 -n 128 \
          -o json >"$W/lb-$v-$P.json" 2>/dev/null
      done
    done
  fi
  first=0
done

log "writing $OUT"
python3 - "$WORK" "$OUT" "$(nproc)" "$(uptime)" "$MODELS" "$PRESETS" "$LEGACY" <<'PY'
import json, os, re, sys

work, out, nproc, load, models, presets, legacy = sys.argv[1:8]
models = [m.split("=", 1) for m in models.split()]
presets, legacy = presets.split(), legacy.split()


def lp(path):
    t = open(path, errors="replace").read()
    g = lambda pat: float(re.search(pat, t).group(1))
    return {"kld": g(r"Mean\s+KLD:\s+([-0-9.]+)"), "kld_err": g(r"Mean\s+KLD:\s+[-0-9.]+\s+±\s+([0-9.]+)"),
            "top1": g(r"Same top p:\s+([0-9.]+)") / 100, "pplr": g(r"Mean PPL\(Q\)/PPL\(base\)\s+:\s+([0-9.]+)")}


def js(path):
    return json.load(open(path)) if os.path.exists(path) else None


def lb(path):
    rows = js(path) or []
    r = {("pp" if x["n_prompt"] else "tg"): x["avg_ts"] for x in rows}
    return r.get("pp"), r.get("tg")


L = []
w = L.append
w("# moec's quantization in llama.cpp's own types")
w("")
w("Generated by `scripts/results-gguf.sh`; do not edit by hand.")
w("")
w("For each llama.cpp preset P, three GGUF files of the same tensor types (the same size, up to a few bytes of "
  "metadata): `llama-quantize` of the F32 original without and with an importance matrix (`llama-imatrix` on "
  "moec's calibration text: the 32768 tokens of the four `corpus/*.train.txt` that `moec-quant` calibrates on, "
  "decoded, `-c 256`), and `moec-quant --preset P --method gptq` on the same text, exported by "
  "`moec-export --gguf` with its blocks copied as they are (each block's scales chosen as the type stores them, "
  "then GPTQ's error feedback on that grid; the output head by GPTQ on the final hidden states, the token "
  "embedding by round-to-nearest as llama.cpp does). All scored by llama.cpp: `llama-perplexity "
  "--kl-divergence` against the F32 original on the four `corpus/*.val.txt` concatenated (`-c 256`: 312 "
  "windows, second half of each scored). KLD = mean KL(original ‖ model) in nats with llama-perplexity's "
  "± (standard error); top-1 = its \"same top p\"; bpw = file bytes × 8 / parameters.")
w("")
chk = os.path.join(work, "check-gguf.log")
if os.path.exists(chk):
    w("## llama.cpp reads what moec writes")
    w("")
    w("`scripts/check-gguf-llamacpp.sh` (run first by this script): moec's GGUF (F32) of each architecture against "
      "llama.cpp itself on the same 128 tokens (largest logit difference relative to the largest logit, limit "
      "1e-4), `llama-tokenize` against `moec-tokenize` on every `data/corpus` text (the SentencePiece family on a "
      "copy of mixtral-tiny with `tests/data/tokenizer_sp.json`), and quantized files through `llama-perplexity`:")
    w("")
    for line in open(chk, errors="replace"):
        line = line.strip()
        if line.startswith("check-gguf: ") and not any(x in line for x in ("building", "quantized files in")):
            w("- " + line[len("check-gguf: "):])
    w("")
verdict = []
for name, _ in models:
    W = os.path.join(work, name)
    nparams = js(os.path.join(W, "inspect.json"))["params_total"]
    w(f"## {name}")
    w("")
    w("| preset | file | bytes | bpw | KLD | PPL ratio | top-1 |")
    w("|---|---|---|---|---|---|---|")
    runs = presets + (legacy if name == models[0][0] else [])
    for P in runs:
        rows = []
        for v, label in (("llama", "llama-quantize"), ("imat", "llama-quantize + imatrix"), ("moec", "**moec GPTQ**")):
            p = os.path.join(work, f"lp-{name}-{v}-{P}.log")
            if not os.path.exists(p):
                continue
            r = lp(p)
            size = int(open(os.path.join(W, f"size-{v}-{P}")).read())
            bpw = f"{8 * size / nparams:.3f}"
            rows.append((label, size, bpw, r))
        for label, size, bpw, r in rows:
            w(f"| {P} | {label} | {size} | {bpw} | {r['kld']:.5f} ± {r['kld_err']:.5f} | {r['pplr']:.4f} | "
              f"{100 * r['top1']:.2f}% |")
        got = {label: (size, r) for label, size, bpw, r in rows}
        if len(got) == 3:
            (sm, rm), (si, ri), (sl, rl) = got["**moec GPTQ**"], got["llama-quantize + imatrix"], got["llama-quantize"]
            verdict.append(f"- {name} {P}: moec {rm['kld']:.5f} against llama-quantize + imatrix {ri['kld']:.5f} "
                           f"({100 * (rm['kld'] - ri['kld']) / ri['kld']:+.0f}%) and without {rl['kld']:.5f}; "
                           f"file bytes {sm - sl:+d} against llama-quantize's ({sm - si:+d} against the imatrix file, which "
                           "carries the matrix's metadata)")
    w("")
    if name == models[0][0]:
        w("Group-wise codes carried into llama.cpp types (`moec-quant --bits B --group 32 [--sym] --attn --method "
          "gptq`, experts and attention; embeddings and head stay BF16): the export copies every code unchanged; "
          "Q4_1's min m = -s·z is stored as F16, which rounds where s·z needs more than F16's 11 significant bits. "
          "`moec-eval` scores the .moec itself on the same text (`--score-from half`). The two figures differ by "
          "that rounding and by llama.cpp's own arithmetic, not by the codes: llama.cpp multiplies Q4_1 and Q8_0 "
          "weights by activations it quantizes to 8 bits (Q8_1, Q8_0) and BF16 weights by activations rounded to "
          "BF16, where moec computes with float32 activations; that is most of the Q8_0 row's difference, where "
          "nothing rounds.")
        w("")
        w("| moec format | llama.cpp type | tensors carried | groups | mins rounded | largest min error (× s) | "
          "KLD llama-perplexity | KLD moec-eval |")
        w("|---|---|---|---|---|---|---|---|")
        for tag, fmt, t in (("q4_1", "4-bit, zero points, groups of 32", "Q4_1"),
                            ("q8_0", "8-bit symmetric, groups of 32", "Q8_0")):
            ex, ev = js(os.path.join(W, f"cexport-{tag}.json")), js(os.path.join(W, f"ceval-{tag}.json"))
            p = os.path.join(work, f"lp-{name}-carry-{tag}.log")
            if not (ex and ev and os.path.exists(p)):
                continue
            r = lp(p)
            kev = ev["kld_mean"]
            w(f"| {fmt} | {t} | {ex['carried_tensors']} | {ex['carried_groups']} | {ex['rounded_mins']} "
              f"({100 * ex['rounded_mins'] / max(1, ex['carried_groups']):.1f}%) | {ex['max_min_error']:.2e} | "
              f"{r['kld']:.5f} | {kev:.5f} |")
        w("")
    bench = [(P, v) for P in runs for v in ("llama", "moec") if os.path.exists(os.path.join(W, f"lb-{v}-{P}.json"))]
    if bench:
        w(f"Speed in llama.cpp (`llama-bench -p 512 -n 128`, mean of its 5 repetitions, tokens/s; {nproc} cores, "
          f"`-t` from THREADS, OpenBLAS variables unset; load at the end of the run: `{load}`). llama-quantize's file "
          "and moec's have the same tensor types, so only noise separates them; the machine is shared.")
        w("")
        w("| preset | llama-quantize pp512 | moec pp512 | llama-quantize tg128 | moec tg128 |")
        w("|---|---|---|---|---|")
        for P in runs:
            a, b = lb(os.path.join(W, f"lb-llama-{P}.json")), lb(os.path.join(W, f"lb-moec-{P}.json"))
            if a[0] and b[0]:
                w(f"| {P} | {a[0]:.0f} | {b[0]:.0f} | {a[1]:.0f} | {b[1]:.0f} |")
        w("")
if verdict:
    w("## Verdict")
    w("")
    w("Mean KLD of moec's file against llama-quantize's of the same type, with and without the importance matrix:")
    w("")
    L.extend(verdict)
    w("")
open(out, "w").write("\n".join(L))
PY
log "done"
