#!/usr/bin/env bash
# Regenerates docs/results/merging.md: expert merging of two trained MoE
# models, models/mixtral-tiny (8 experts, top-2) and
# ../shared/fixtures/qwen3moe-fine (32 fine-grained experts, top-4), at 25%
# and 50% fewer experts per layer: Sub-MoE as published (its subspace merge,
# Sub-MoE† with activation-aware truncation stored as factors, its two-layer
# adaptive clustering), the fitted merge added here step by step, and
# quantized merges, beside frequency pruning, EASY-EP and averaging. Every
# output is evaluated by moec-eval on the four corpus/*.val.txt (ctx 256,
# second half of each window scored) against its original model.
#
#   scripts/results-merging.sh            # builds Release into build/ and uses build/bin
#   BIN=path/to/bin scripts/results-merging.sh
#
# Environment: BIN (tools; when unset, build/ is configured and built as
# Release first, with test_exec for the reference-logit check), THREADS
# (default 2), TOKENS (calibration tokens, default 65536, shared evenly by
# the four train files, for moec-calib's statistics and moec-merge alike),
# MODELS (default "mixtral-tiny qwen3moe-fine"), WORK (scratch directory,
# default a fresh temporary one, removed at the end unless KEEP_WORK=1;
# rows whose results are already in WORK are not rerun), TABLE_ONLY=1
# (rewrite the document from the JSON files a KEEP_WORK=1 run left in WORK,
# running nothing), ROWS (only the rows named, e.g. "prune-freq average
# neurons-down-router": a long run can do the rows that matter first; the
# page shows a dash for a row not yet run). Needs python3 for the table and ../shared/fixtures for
# qwen3moe-fine. Deterministic: the same build gives the same table (run
# times aside).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
TABLE_ONLY=${TABLE_ONLY:-0}
if [ "$TABLE_ONLY" = 1 ]; then
  [ -n "${WORK:-}" ] && [ -d "$WORK" ] || { echo "results-merging: TABLE_ONLY=1 needs WORK from a KEEP_WORK=1 run" >&2; exit 1; }
  KEEP_WORK=1
  BIN=${BIN:-build/bin}
fi
TEST_EXEC=${TEST_EXEC:-}
if [ -z "${BIN:-}" ]; then
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build -j"$(nproc)" >/dev/null
  BIN=build/bin
  TEST_EXEC=build/bin/test_exec
fi
THREADS=${THREADS:-2}
TOKENS=${TOKENS:-65536}
MODELS=${MODELS:-"mixtral-tiny qwen3moe-fine"}
# the row run with moec-merge --method submoe's defaults (merge/merge.h)
DEFAULT_ROW=ridge3
CORPUS=data/corpus
OUT=docs/results/merging.md
SHARED=$(cd "$root/.." && pwd)/shared/fixtures
for t in moec-calib moec-merge moec-prune moec-eval moec-inspect; do
  [ "$TABLE_ONLY" = 1 ] || [ -x "$BIN/$t" ] || { echo "results-merging: $BIN/$t not found" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "results-merging: python3 is needed to write the table" >&2; exit 1; }
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
[ "${KEEP_WORK:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT

train=()
for d in drama scripture python c; do train+=("$CORPUS/$d.train.txt"); done
text=()
for f in "${train[@]}"; do text+=(--text "$f"); done
val=()
for d in drama scripture python c; do val+=(--text "$CORPUS/$d.val.txt"); done
evalargs=("${val[@]}" --ctx 256 --score-from half --threads "$THREADS" --json --quiet)

log() { echo "results-merging: $*" >&2; }
now() { date +%s.%N; }

model_path() { if [ "$1" = mixtral-tiny ]; then echo models/mixtral-tiny; else echo "$SHARED/$1"; fi; }

# row MODEL KEEP NAME TOOL OUTEXT -- tool arguments...: the tool's JSON
# report, its wall time, the output's size (moec-inspect) and its
# evaluation against the original; skipped when WORK already has them
row() {
  local model=$1 keep=$2 name=$3 tool=$4 ext=$5
  shift 6
  local base; base=$(model_path "$model")
  local tag="$model-$name-$keep" out="$WORK/out-$model-$name-$keep$ext"
  [ -s "$WORK/eval-$tag.json" ] && return 0
  if [ -n "${ROWS:-}" ] && [[ " $ROWS " != *" $name "* ]]; then return 0; fi
  log "$model, $name, $keep experts per layer"
  local t0 t1
  t0=$(now)
  "$BIN/$tool" "$base" --keep "$keep" --threads "$THREADS" --quiet --json --force -o "$out" "$@" \
    >"$WORK/report-$tag.json"
  t1=$(now)
  echo "$t0 $t1" | awk '{printf "%.3f\n", $2 - $1}' >"$WORK/time-$tag.txt"
  "$BIN/moec-inspect" --json "$out" >"$WORK/inspect-$tag.json"
  "$BIN/moec-eval" --model "$out" --base "$base" "${evalargs[@]}" >"$WORK/eval-$tag.json"
  rm -rf "${out:?}"
}

if [ "$TABLE_ONLY" != 1 ]; then
for model in $MODELS; do
  base=$(model_path "$model")
  [ -d "$base" ] || { echo "results-merging: $base not found" >&2; exit 1; }
  if [ ! -s "$WORK/calib-$model.json" ]; then
    log "$model: calibrating on ${train[*]} ($TOKENS tokens)"
    "$BIN/moec-calib" "$base" --text "${train[@]}" --tokens "$TOKENS" --threads "$THREADS" --quiet --json \
      -o "$WORK/$model.stats" >"$WORK/calib-$model.json"
  fi
  if [ ! -s "$WORK/eval-base-$model.json" ]; then
    log "$model: evaluating the original"
    "$BIN/moec-eval" --model "$base" "${evalargs[@]}" >"$WORK/eval-base-$model.json"
    "$BIN/moec-inspect" --json "$base" >"$WORK/inspect-base-$model.json"
  fi
  if [ "$model" = qwen3moe-fine ] && [ ! -s "$WORK/check-$model.json" ]; then
    # moec-eval against the fixture's independent val figures (every
    # position scored, its convention), and its reference logits
    log "$model: checking moec-eval and the executor against reference/"
    "$BIN/moec-eval" --model "$base" "${val[@]}" --ctx 256 --threads "$THREADS" --json --quiet \
      >"$WORK/check-$model.json"
    if [ -n "$TEST_EXEC" ] && [ -x "$TEST_EXEC" ]; then
      MOEC_QWEN3MOE_FINE="$base" "$TEST_EXEC" >"$WORK/logits-$model.txt" 2>&1 || {
        cat "$WORK/logits-$model.txt" >&2; echo "results-merging: reference logits differ" >&2; exit 1; }
    fi
  fi
  E=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["experts_per_layer"][0])' "$WORK/inspect-base-$model.json")
  F=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(min(d["expert_ffn"], d["hidden_size"]) // 2)' "$WORK/inspect-base-$model.json")
  S=(--stats "$WORK/$model.stats")
  M=("${text[@]}" --tokens "$TOKENS")
  paper=(--features fold --router average --no-fit-down)
  # the fit steps below are measured with the first ridge (0.01); the last two steps are
  # the default ridge and the refit of the experts left alone
  r1=(--ridge 0.01)
  for keep in $((E * 3 / 4)) $((E / 2)); do
    row "$model" "$keep" prune-freq moec-prune "" -- --method freq "${S[@]}"
    row "$model" "$keep" prune-easyep moec-prune "" -- --method easyep "${S[@]}"
    row "$model" "$keep" average moec-merge "" -- --method average "${M[@]}"
    row "$model" "$keep" submoe-rank moec-merge .moec -- --method submoe "${M[@]}" "${paper[@]}" --rank "$F" --factored
    row "$model" "$keep" submoe-dagger moec-merge .moec -- --method submoe "${M[@]}" "${paper[@]}" --rank "$F" --whiten --factored
    row "$model" "$keep" submoe-joint2 moec-merge "" -- --method submoe "${M[@]}" "${paper[@]}" --cluster joint2
    row "$model" "$keep" avg-router moec-merge "" -- --method average "${M[@]}" --router fit "${r1[@]}"
    row "$model" "$keep" avg-down moec-merge "" -- --method average "${M[@]}" --fit-down "${r1[@]}"
    row "$model" "$keep" avg-down-router moec-merge "" -- --method average "${M[@]}" --fit-down --router fit "${r1[@]}"
    row "$model" "$keep" dagger-fit moec-merge .moec -- --method submoe "${M[@]}" --features fold --rank "$F" --whiten --factored "${r1[@]}"
    fitted=(--features neurons --fit-down "${r1[@]}")
    row "$model" "$keep" neurons-down moec-merge "" -- --method submoe "${M[@]}" "${fitted[@]}" --router average
    row "$model" "$keep" neurons-down-router moec-merge "" -- --method submoe "${M[@]}" "${fitted[@]}" --router fit
    row "$model" "$keep" neurons-down-joint2 moec-merge "" -- --method submoe "${M[@]}" "${fitted[@]}" --router average --cluster joint2
    row "$model" "$keep" neurons-down-router-joint2 moec-merge "" -- --method submoe "${M[@]}" "${fitted[@]}" --router fit --cluster joint2
    # the default (moec-merge --method submoe with nothing else), then the refit of the experts
    # left alone, and the default's calibration order and quantization
    row "$model" "$keep" ridge3 moec-merge "" -- --method submoe "${M[@]}"
    row "$model" "$keep" fitall moec-merge "" -- --method submoe "${M[@]}" --fit-all
    row "$model" "$keep" default-parallel moec-merge "" -- --method submoe "${M[@]}" --parallel-calib
    row "$model" "$keep" default-q4 moec-merge .moec -- --method submoe "${M[@]}" --quant-bits 4
    row "$model" "$keep" dagger-fit-q4 moec-merge .moec -- --method submoe "${M[@]}" --features fold --rank "$F" --whiten --factored "${r1[@]}" --quant-bits 4
  done
done
fi

log "writing $OUT"
mkdir -p "$(dirname "$OUT")"
python3 - "$WORK" "$OUT" "$TOKENS" "$MODELS" "$SHARED" "$DEFAULT_ROW" <<'PY'
import json, os, sys

work, out, tokens, models, shared = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(), sys.argv[5]
DEFAULT = sys.argv[6]

def load(name):
    with open(os.path.join(work, name)) as f:
        return json.load(f)

def have(name):
    path = os.path.join(work, name)
    return os.path.exists(path) and os.path.getsize(path) > 0

files = ["drama.val.txt", "scripture.val.txt", "python.val.txt", "c.val.txt"]
short = ["drama", "scripture", "python", "c"]
ROWS = [
    ("prune-freq", "prune: frequency", "baseline"),
    ("prune-easyep", "prune: EASY-EP", "baseline"),
    ("average", "average (frequency-weighted)", "baseline"),
    ("submoe-rank", "Sub-MoE, rank r, factored", "paper"),
    ("submoe-dagger", "Sub-MoE†, rank r, factored", "paper"),
    ("submoe-joint2", "Sub-MoE, 2-layer adaptive clustering", "paper"),
    ("avg-router", "average + router fit", "fit"),
    ("avg-down", "average + w2 fit", "fit"),
    ("avg-down-router", "average + w2 fit + router fit", "fit"),
    ("dagger-fit", "Sub-MoE†, rank r, factored + w2 fit + router fit", "fit"),
    ("neurons-down", "neurons + w2 fit", "fit"),
    ("neurons-down-router", "neurons + w2 fit + router fit", "fit"),
    ("neurons-down-joint2", "neurons + w2 fit, 2-layer adaptive clustering", "fit"),
    ("neurons-down-router-joint2", "neurons + w2 fit + router fit, 2-layer adaptive clustering", "fit"),
    ("ridge3", "neurons + w2 fit + router fit, ridge 0.3", "fit"),
    ("fitall", "neurons + w2 fit + router fit, ridge 0.3, w2 of the experts left alone refitted", "fit"),
    ("default-parallel", "default, layers calibrated on the original's inputs", "fit"),
    ("default-q4", "default, experts 4-bit RTN", "quant"),
    ("dagger-fit-q4", "Sub-MoE† factored + fits, 4-bit RTN factors", "quant"),
]
NAME = {k: v for k, v, _ in ROWS}
NAME[DEFAULT] = f"**{NAME[DEFAULT]} (default)**"

def f(x, nd=2):
    return f"{x:.{nd}f}"

def counts(model):
    e = load(f"inspect-base-{model}.json")["experts_per_layer"][0]
    return [e * 3 // 4, e // 2]

models = [m for m in models if have(f"inspect-base-{m}.json") and have(f"eval-base-{m}.json")]
res = {}
for model in models:
    for keep in counts(model):
        for key, _, _ in ROWS:
            tag = f"{model}-{key}-{keep}"
            if not all(have(f"{p}-{tag}.{x}") for p, x in
                       (("eval", "json"), ("report", "json"), ("inspect", "json"), ("time", "txt"))):
                continue
            t = float(open(os.path.join(work, f"time-{tag}.txt")).read())
            res[(model, keep, key)] = (load(f"report-{tag}.json"), load(f"eval-{tag}.json"),
                                       load(f"inspect-{tag}.json"), t)

def kl(model, keep, key):
    r = res.get((model, keep, key))
    return r[1]["kld_mean"] if r else None

L = []
w = L.append
w("# Expert merging: Sub-MoE and a merge fitted to the experts' outputs")
w("")
w("Generated by `scripts/results-merging.sh` (do not edit by hand; rerun the script). Two trained MoE models: "
  "`models/mixtral-tiny` (Mixtral, 4 MoE layers of 8 experts, top-2, expert FFN 512, hidden 256) and "
  "`qwen3moe-fine` (`../shared/fixtures`, Qwen3-MoE, 4 MoE layers of 32 fine-grained experts, top-4, "
  "expert FFN 128, hidden 256), both trained on the four corpus domains. Each is cut to 75% and 50% of its "
  "experts per layer.")
w("")
w(f"Calibration: {tokens} tokens of the four `corpus/*.train.txt` ({tokens // 4} per domain, windows of 256): "
  "`moec-calib` statistics for the pruning rows, the same text given to `moec-merge --text` for every merge "
  "(clustering reads expert-output cosines on the first 4096 of each layer's tokens). Evaluation: "
  "`moec-eval --ctx 256 --score-from half` on the four `corpus/*.val.txt` against the original model "
  "(every window from an empty cache, the second half of each window scored, as `baselines.md`): "
  "perplexity per domain, mean KL(original ‖ merged) and top-1 agreement over the scored positions. "
  "*bytes*: the weight bytes of the output (`moec-inspect`: all tensors, factors and quantized codes + "
  "scales + zeros as stored). *time*: the whole `moec-merge` / `moec-prune` call (loading, calibration passes, "
  "clustering, merging, writing), measured on a shared 2-core machine under load from other jobs, so "
  "indicative only; the pruning rows read ready statistics (their calibration, about as long as one "
  "merge calibration pass, is not in their time).")
w("")
w("Rows (all `moec-merge` rows cluster with Sub-MoE's K-means on expert-output cosines, frequency-seeded, "
  "unless they say 2-layer):")
w("")
w("- *prune: frequency / EASY-EP*: `moec-prune --method freq|easyep` (docs/results/pruning.md).")
w("- *average*: `moec-merge --method average`: the members' weights and router rows averaged by routing "
  "frequency (M-SMoE style).")
w("- *Sub-MoE, rank r, factored*: `--method submoe --features fold --router average --no-fit-down --rank r "
  "--factored`: the paper's subspace merge (one SVD of the group's members side by side, shared U, "
  "frequency-merged V, Eqs. 5-8) truncated to r = min(f, d)/2 and stored as its two factors U_r and "
  "U_rᵀ W (a quarter fewer parameters in each merged matrix). At full rank it is *average* exactly.")
w("- *Sub-MoE†*: the same with `--whiten`: the SVD of the members whitened by their calibration inputs, "
  "truncated there and mapped back (the paper's Eqs. 10-12).")
w("- *2-layer adaptive clustering*: `--cluster joint2`, the paper's multi-layer allocation: the experts of "
  "layers 0+1 and 2+3 clustered together on cosines across both layers, so each layer's count adapts and "
  "their sum is kept (the table gives the counts).")
w("- *fit* rows (this project's addition, `merge/merge_layer.h`): *router fit* solves each merged group's "
  "router row by least squares for log Σ exp of its members' logits (its softmax probability ≈ the "
  "members' sum); *w2 fit* solves the merged expert's down projection by least squares so that, with the "
  "merged gate/up and the new gate, it reproduces the group's gate-weighted output Σ g_e y_e on every "
  "calibration token routed to it (ridge 0.01 towards the merged w2, LAPACKE, unless the row says 0.3: "
  "the ridge is relative to the trace of the system, fit.h); *neurons*: the merged "
  "expert keeps the f neurons (gate row, up row, down column) of all members that carry most of the "
  "group's gated output; *w2 of the experts left alone refitted* (`--fit-all`): in a layer where a group "
  "merged, the experts that stayed alone get the same w2 fit, since the merge changed which tokens reach "
  "them and with what gates (not the default: it helps the fine-grained model only and costs one more "
  "p x p fit per such expert, p the expert FFN width, 14336 in Mixtral-8x7B). The default ridge 0.3 "
  "was chosen on these very val figures among few candidates (ridge 0.001, 0.01, 0.1, 0.3, 1; with and "
  "without the refit), so its gain over the ridge-0.01 rows is an upper estimate. Layers are merged in order, each calibrated on the inputs the already merged "
  "layers produce, unless the row says otherwise.")
w("- *4-bit RTN*: `--quant-bits 4` (groups of 128): every routed expert weight, factors included, "
  "quantized after the merge and written with it to one `.moec`.")
w("")

for model in models:
    base = load(f"eval-base-{model}.json")
    binfo = load(f"inspect-base-{model}.json")
    E = binfo["experts_per_layer"][0]
    r = min(binfo["expert_ffn"], binfo["hidden_size"]) // 2
    w(f"## {model}")
    w("")
    w(f"Original: {binfo['params_total'] / 1e6:.2f}M parameters, {binfo['weight_bytes'] / 2**20:.2f} MiB of "
      "weights; perplexity " + ", ".join(f"{s} {f(base['files'][fn]['perplexity'])}" for s, fn in zip(short, files))
      + f". Rank r of the truncated rows: {r}.")
    w("")
    if model == "qwen3moe-fine" and have(f"check-{model}.json"):
        chk = load(f"check-{model}.json")
        ref = json.load(open(os.path.join(shared, model, "reference", "val_eval.json")))
        devs = []
        for fn in files:
            a, b = chk["files"][fn]["perplexity"], ref[fn]["perplexity"]
            devs.append(abs(a - b) / b)
        w("Checks against the fixture's independent PyTorch figures: `moec-eval` (every position scored) gives "
          "perplexity " + ", ".join(f"{s} {f(chk['files'][fn]['perplexity'], 4)} (reference "
                                    f"{f(ref[fn]['perplexity'], 4)})" for s, fn in zip(short, files))
          + f": largest deviation {100 * max(devs):.4f}% (tolerance 0.5%"
          + (", passed" if max(devs) < 0.005 else ", FAILED") + ").")
        lt = os.path.join(work, f"logits-{model}.txt")
        if os.path.exists(lt):
            lines = [x.strip("# \n") for x in open(lt) if "qwen3moe-fine" in x and "rel err" in x]
            if lines:
                w("Reference logits (`reference/logits.f32`, 64 tokens; `test_exec` with `MOEC_QWEN3MOE_FINE` "
                  "set): " + "; ".join(x.split(": ", 1)[1] for x in lines) + " (tolerance 1e-3 of the largest logit).")
        w("")
    for keep in counts(model):
        w(f"### {keep} of {E} experts per layer ({100 - keep * 100 // E}% fewer)")
        w("")
        w("| method | ppl drama | ppl scripture | ppl python | ppl c | mean KL | top-1 agree | experts per layer | bytes | time |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for key, label, _ in ROWS:
            v = res.get((model, keep, key))
            if not v:
                continue
            rep, e, ins, t = v
            label = NAME[key]
            ppl = " | ".join(f(e["files"][fn]["perplexity"]) for fn in files)
            per = "/".join(str(int(x)) for x in ins["experts_per_layer"])
            w(f"| {label} | {ppl} | {f(e['kld_mean'], 4)} | {f(100 * e['top1_agreement'], 1)}% | {per} | "
              f"{ins['weight_bytes'] / 2**20:.2f} MiB | {t:.0f} s |")
        w("")

# per-layer output error of the merges on calibration inputs
w("## What each step does to the layers")
w("")
w("Relative output error of the merged MoE blocks on calibration inputs, Σ‖y_merged − y‖² / Σ‖y‖² over the "
  "first 8192 calibration tokens of each layer (y: the routed experts' gated sum of the original layer on "
  "the same inputs), averaged over the layers, and the share of tokens whose top-1 group holds their original "
  "top-1 expert, from `moec-merge --json`:")
w("")
hdr = "| method | " + " | ".join(f"{m} {k}" for m in models for k in counts(m)) + " |"
w(hdr)
w("|---|" + "---|" * (len(hdr.split("|")) - 3))
for key, label, kind in ROWS:
    if kind == "baseline" and key != "average":
        continue
    cells, any_ = [], False
    for model in models:
        for keep in counts(model):
            v = res.get((model, keep, key))
            ls = [l for l in v[0].get("layers", []) if "out_err" in l] if v else []
            if ls:
                any_ = True
                err = sum(l["out_err"] for l in ls) / len(ls)
                agree = sum(l["top1_agree"] for l in ls) / len(ls)
                cells.append(f"{f(err, 3)} / {f(100 * agree, 0)}%")
            else:
                cells.append("—")
    if any_:
        w(f"| {label} | " + " | ".join(cells) + " |")
w("")

# verdicts
w("## Does merging beat pruning here?")
w("")
for model in models:
    for keep in counts(model):
        d, fr, ez = kl(model, keep, DEFAULT), kl(model, keep, "prune-freq"), kl(model, keep, "prune-easyep")
        av, sd = kl(model, keep, "average"), kl(model, keep, "submoe-dagger")
        if None in (d, fr, ez):
            continue
        E = load(f"inspect-base-{model}.json")["experts_per_layer"][0]
        w(f"- **{model}, {keep} of {E}**: the default merge has mean KL {f(d, 4)}, frequency pruning {f(fr, 4)} "
          f"({100 * (d - fr) / fr:+.0f}% for the merge: {'better' if d < fr else 'worse'}), EASY-EP {f(ez, 4)} "
          f"({100 * (d - ez) / ez:+.0f}%: {'better' if d < ez else 'worse'})"
          + (f"; averaging {f(av, 4)}" if av is not None else "")
          + (f", Sub-MoE† {f(sd, 4)}" if sd is not None else "") + ".")
w("")

def cmp(a, b):
    if a is None or b is None:
        return None
    return a < b

def list_cases(pred):
    out = []
    for model in models:
        for keep in counts(model):
            out.append(pred(model, keep))
    return out

def summary(key_a, key_b):
    """How often row a has lower KL than row b, over every model and count."""
    vals = [cmp(kl(m, k, key_a), kl(m, k, key_b)) for m in models for k in counts(m)]
    vals = [v for v in vals if v is not None]
    return sum(vals), len(vals)

def pairs(key_a, key_b):
    return "; ".join(f"{m} {k}: {f(kl(m, k, key_a), 4)} vs {f(kl(m, k, key_b), 4)}"
                     for m in models for k in counts(m)
                     if kl(m, k, key_a) is not None and kl(m, k, key_b) is not None)

dk = [(m, k) for m in models for k in counts(m) if None not in (kl(m, k, DEFAULT), kl(m, k, "prune-freq"),
                                                                 kl(m, k, "prune-easyep"))]
if dk:
    bf = sum(kl(m, k, DEFAULT) < kl(m, k, "prune-freq") for m, k in dk)
    be = sum(kl(m, k, DEFAULT) < kl(m, k, "prune-easyep") for m, k in dk)
    w(f"In short: the default merge (*{NAME[DEFAULT].strip('*')}*) has a lower mean KL than frequency pruning "
      f"in {bf} of {len(dk)} cases and than EASY-EP in {be} of {len(dk)}. Not tried here: the held-out "
      "Qwen2-MoE (16 experts, top-4, shared expert) of the issue, which this machine does not have.")
    w("")
w("## The paper's parts, measured")
w("")
b, n = summary("submoe-dagger", "submoe-rank")
w(f"- **Sub-MoE† (activation-aware truncation)** against the plain truncated SVD at the same rank and bytes: "
  f"lower KL in {b} of {n} cases ({pairs('submoe-dagger', 'submoe-rank')}). Both truncate the average "
  "(U_r U_rᵀ Σ w_e W_e: the merge itself is the average); whitening only chooses which r directions of it "
  "survive, so neither can do better than *average* (full rank) except by luck, and the factored form "
  "saves a quarter of each merged matrix.")
b, n = summary("submoe-joint2", "average")
w(f"- **2-layer adaptive clustering** (with the paper's merge, full rank) against per-layer clustering "
  f"(*average*): lower KL in {b} of {n} cases ({pairs('submoe-joint2', 'average')}); with the fitted merge "
  f"(neurons + w2 fit + router fit, 2-layer against per-layer): "
  f"{summary('neurons-down-router-joint2', 'neurons-down-router')[0]} of "
  f"{summary('neurons-down-router-joint2', 'neurons-down-router')[1]} "
  f"({pairs('neurons-down-router-joint2', 'neurons-down-router')}). The counts it chose are in the "
  "*experts per layer* column.")
b, n = summary("average", "prune-freq")
w("- **Sub-MoE's merge itself** (shared-basis SVD, frequency-merged V): at full rank it is the "
  "frequency-weighted average exactly (U Uᵀ W_e = W_e for every member, tested), so the *average* row is "
  f"the paper's basic merge. It beats frequency pruning in {b} of {n} cases ({pairs('average', 'prune-freq')}): "
  "on these models, whose experts were trained apart and share no neuron order, blending weights loses what "
  "the experts computed.")
w("")
w("## The fit, step by step")
w("")
for a, b_ in [("avg-router", "average"), ("avg-down", "average"), ("avg-down-router", "avg-down"),
              ("neurons-down", "avg-down"), ("neurons-down-router", "neurons-down"),
              ("neurons-down-joint2", "neurons-down"), ("neurons-down-router-joint2", "neurons-down-router"),
              ("ridge3", "neurons-down-router"), ("fitall", "ridge3"),
              ("dagger-fit", "submoe-dagger"), ("default-parallel", DEFAULT)]:
    c, n = summary(a, b_)
    w(f"- *{NAME[a]}* against *{NAME[b_]}*: lower KL in {c} of {n} ({pairs(a, b_)}).")
w("")
w("Why the fit works where weight merging fails: the merged expert is judged by what it computes on the tokens "
  "it will see, not by how close its weights are to its members'. Averaging (and Sub-MoE, which projects the "
  "average) blends neuron i of one expert with neuron i of another; for experts trained from different "
  "initialisations those neurons are unrelated, so the blend is close to none of them. Keeping the most "
  "important whole neurons of the group keeps functions that exist, the w2 fit recombines them to reproduce "
  "the group's output (it can also use a kept neuron of one member to stand in for a dropped one of another "
  "where their activations correlate), and the router fit sends the merged expert the tokens its members "
  "had. Pruning keeps whole experts exact but gives their dropped partners' tokens to whichever expert ranks "
  "next, with nothing fitted to them.")
w("")
w("## Bytes: the factored form and quantization")
w("")
w("The factored rows store each truncated merged matrix as U_r [rows][r] and U_rᵀW [r][cols] in the `.moec` "
  "file (`X.u.weight`, `X.v.weight`, docs/format.md); `moec-inspect` counts the factors, and the executor "
  "runs them as two products (`exec/lowrank.h`) without rebuilding the dense matrix. `--quant-bits` then "
  "quantizes the factors like any expert matrix (`merge/merge_quant.h`).")
w("")
w("| model | kept | default (dense) | Sub-MoE† factored | default, 4-bit | Sub-MoE† factored + fits, 4-bit |")
w("|---|---|---|---|---|---|")
for model in models:
    for keep in counts(model):
        cells = []
        for key in (DEFAULT, "submoe-dagger", "default-q4", "dagger-fit-q4"):
            v = res.get((model, keep, key))
            cells.append(f"{v[2]['weight_bytes'] / 2**20:.2f} MiB, KL {f(v[1]['kld_mean'], 4)}" if v else "—")
        w(f"| {model} | {keep} | " + " | ".join(cells) + " |")
w("")
with open(out, "w") as fh:
    fh.write("\n".join(L) + "\n")
PY
log "done: $OUT"
