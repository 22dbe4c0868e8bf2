#!/usr/bin/env bash
# Measures every `moec-quant --preset` on models/mixtral-tiny as a user would
# run it, checks that each reproduces the results-table row it names, and
# writes what --list-presets prints:
#   quant/preset_results.h      the measured KL, top-1, perplexity ratio and bits
#                               per weight of each preset (compiled into libmoec:
#                               rebuild after running this)
#   docs/results/presets.md     the same, beside each reference row, with the commands
#
# Each preset is quantized by
#   moec-quant models/mixtral-tiny --preset NAME [--text data/corpus/{drama,scripture,python,c}.train.txt]
# (calibration text only for presets that need it, 32768 tokens by default as
# in the tables) and scored as its reference table scores its rows:
#   docs/results/quantization.md  moec-eval --base models/mixtral-tiny --text the four
#                                 corpus/*.val.txt --ctx 256 --score-from half (each file
#                                 windowed on its own)
#   docs/results/llama-cpp.md     the same on the four val files concatenated (the
#                                 page's "moec-eval KLD" column)
# A preset reproduces its row when |KL - row KL| <= 5% of the row's KL + 0.00005
# (the table prints 4 decimals); the page says which do.
#
#   scripts/results-presets.sh               # tools from build/bin (Release)
#
# Environment: BIN (default build/bin), THREADS (default 2), WORK (scratch
# directory, removed at the end unless KEEP_WORK=1), ONLY="name ..." (measure
# only these presets; the others keep their previous numbers).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
BIN=${BIN:-build/bin}
THREADS=${THREADS:-2}
MODEL=models/mixtral-tiny
CORPUS=data/corpus
ONLY=${ONLY:-}
log() { echo "results-presets: $*" >&2; }
for t in moec-quant moec-eval; do
  [ -x "$BIN/$t" ] || { log "$BIN/$t not found (build Release into build/ or set BIN)"; exit 1; }
done
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
[ "${KEEP_WORK:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT

train=("$CORPUS"/{drama,scripture,python,c}.train.txt)
val=("$CORPUS"/{drama,scripture,python,c}.val.txt)
cat "${val[@]}" >"$WORK/val.txt"
"$BIN/moec-quant" --list-presets --json >"$WORK/presets.json"
mapfile -t names < <(python3 -c 'import json,sys; [print(p["name"]) for p in json.load(open(sys.argv[1]))["presets"]]' \
  "$WORK/presets.json")

for name in "${names[@]}"; do
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
  needs=$(python3 -c 'import json,sys; print(int(next(p for p in json.load(open(sys.argv[1]))["presets"] if p["name"] == sys.argv[2])["needs_text"]))' \
    "$WORK/presets.json" "$name")
  ref=$(python3 -c 'import json,sys; print(next(p for p in json.load(open(sys.argv[1]))["presets"] if p["name"] == sys.argv[2])["reference"])' \
    "$WORK/presets.json" "$name")
  text=()
  [ "$needs" = 1 ] && text=(--text "${train[@]}")
  log "$name: moec-quant $MODEL --preset $name ${text[*]}"
  start=$(date +%s.%N)
  "$BIN/moec-quant" "$MODEL" --preset "$name" "${text[@]}" --threads "$THREADS" --json --quiet --force \
    -o "$WORK/$name.moec" >"$WORK/quant-$name.json"
  end=$(date +%s.%N)
  echo "$start $end" >"$WORK/time-$name"
  if [[ "$ref" == docs/results/llama-cpp.md:* ]]; then
    scored=(--text "$WORK/val.txt")
  else
    scored=(--text "${val[@]}")
  fi
  log "$name: moec-eval"
  "$BIN/moec-eval" "$WORK/$name.moec" --base "$MODEL" "${scored[@]}" --ctx 256 --score-from half \
    --threads "$THREADS" --json --quiet >"$WORK/eval-$name.json"
  rm -f "$WORK/$name.moec"
done

log "writing quant/preset_results.h and docs/results/presets.md"
python3 - "$WORK" "$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)" <<'PY'
import json, os, re, sys

work, commit = sys.argv[1], sys.argv[2]
presets = json.load(open(os.path.join(work, "presets.json")))["presets"]
SCORING = {
    "docs/results/quantization.md": "the four data/corpus/*.val.txt, each windowed on its own, ctx 256, second "
                                    "half of each window scored (moec-eval --score-from half)",
    "docs/results/llama-cpp.md": "the four data/corpus/*.val.txt concatenated, ctx 256, second half of each "
                                 "window scored (moec-eval --score-from half)",
}
COLUMN = {"docs/results/quantization.md": "KLD", "docs/results/llama-cpp.md": "moec-eval KLD"}


def table_kld(reference):
    """The KL of the row `reference` ("file: row") in its results table."""
    path, row = reference.split(": ", 1)
    header = None
    for line in open(path):
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if COLUMN[path] in cells:
            header = cells
            continue
        if header and len(cells) == len(header) and (cells[0] == row or f"`{row}`" in cells[0]):
            return float(cells[header.index(COLUMN[path])])
    raise SystemExit(f"results-presets: row '{row}' not found in {path}")


# previous measurements survive a partial (ONLY=...) run
old = {}
hdr = "quant/preset_results.h"
if os.path.exists(hdr):
    for m in re.finditer(r'\{\.name = "([^"]+)", \.kld = ([^,]+), \.top1 = ([^,]+), \.ppl_ratio = ([^,]+), '
                         r'\.bpw_file = ([^,]+), \.ref_kld = ([^,]+),', open(hdr).read()):
        old[m.group(1)] = dict(kld=float(m.group(2)), top1=float(m.group(3)), pplr=float(m.group(4)),
                               bpw=float(m.group(5)), secs=None)

rows = []
for p in presets:
    name, ref = p["name"], p["reference"]
    path = ref.split(": ", 1)[0]
    q, e = os.path.join(work, f"quant-{name}.json"), os.path.join(work, f"eval-{name}.json")
    if os.path.exists(e):
        qj, ej = json.load(open(q)), json.load(open(e))
        t0, t1 = map(float, open(os.path.join(work, f"time-{name}")).read().split())
        m = dict(kld=ej["kld_mean"], top1=ej["top1_agreement"], pplr=ej["ppl_ratio"], bpw=qj["bpw_file"],
                 secs=t1 - t0)
    elif name in old:
        m = old[name]
    else:
        continue
    rk = table_kld(ref)
    ok = abs(m["kld"] - rk) <= 0.05 * rk + 0.00005
    rows.append((p, m, rk, ok, SCORING[path]))

cmd = "scripts/results-presets.sh"
with open(hdr, "w") as f:
    f.write("/* preset_results.h - each --preset measured on models/mixtral-tiny.\n"
            f" * Generated by {cmd} (build {commit}); do not edit by hand. */\n")
    f.write(f'#define PRESET_RESULTS_COMMAND "{cmd}"\n')
    f.write("static const moec_quant_preset_result preset_results[] = {\n")
    for p, m, rk, ok, sc in rows:
        f.write(f'    {{.name = "{p["name"]}", .kld = {m["kld"]:.6g}, .top1 = {m["top1"]:.6g}, '
                f'.ppl_ratio = {m["pplr"]:.6g}, .bpw_file = {m["bpw"]:.6g}, .ref_kld = {rk:.6g},\n'
                f'     .scoring = "{sc}"}},\n')
    if not rows:
        f.write("    {.name = NULL},\n")
    f.write("};\n")

L = []
w = L.append
w("# Quantization presets on mixtral-tiny")
w("")
w(f"Generated by `{cmd}` (build {commit}); do not edit by hand.")
w("")
w("Each `moec-quant --preset NAME` is one measured-best row of a results table. This page quantizes "
  "`models/mixtral-tiny` with each preset exactly as a user would, scores it as the row's table scores "
  "its rows, and checks that it reproduces the row: |KL − row KL| ≤ 5% of the row's KL + 0.00005 (the "
  "tables print four decimals). `moec-quant --list-presets` prints the KL and bits per weight below "
  "(compiled in from `quant/preset_results.h`, which this script writes).")
w("")
w("- **Quantize**: `moec-quant models/mixtral-tiny --preset NAME -o NAME.moec`, plus "
  "`--text data/corpus/{drama,scripture,python,c}.train.txt` for the presets that need calibration text "
  "(32,768 tokens by default, as the tables).")
w("- **Score**: `moec-eval NAME.moec --base models/mixtral-tiny --text ... --ctx 256 --score-from half`: "
  + "; ".join(f"rows of `{k}`: {v}" for k, v in SCORING.items()) + ".")
w("- KL = mean KL(original ‖ quantized) in nats; bits per weight over the file = 8 × file bytes / 15,476,992 "
  "parameters.")
w("")
w("| preset | options it stands for | reference row | row KL | preset KL | KL / row | reproduces | bpw file | "
  "top-1 | PPL ratio | quantize s |")
w("|---|---|---|---|---|---|---|---|---|---|---|")
for p, m, rk, ok, sc in rows:
    secs = "—" if m["secs"] is None else f"{m['secs']:.0f}"
    w(f"| `{p['name']}` | `{p['options']}` | {p['reference']} | {rk:.4f} | {m['kld']:.4f} | {m['kld'] / rk:.2f} | "
      f"{'yes' if ok else '**no**'} | {m['bpw']:.2f} | {100 * m['top1']:.1f}% | {m['pplr']:.4f} | {secs} |")
w("")
missing = [p["name"] for p in presets if p["name"] not in {r[0]["name"] for r in rows}]
if missing:
    w(f"Not measured: {', '.join(missing)}.")
    w("")
w("Times are wall seconds on the shared 2-core machine (compare within one run only).")
with open("docs/results/presets.md", "w") as f:
    f.write("\n".join(L) + "\n")
bad = [r[0]["name"] for r in rows if not r[3]]
if bad:
    print(f"results-presets: not within noise of their rows: {', '.join(bad)}", file=sys.stderr)
PY
log "done: rebuild (cmake --build build) so that --list-presets prints these numbers, then scripts/gen-cli-doc.sh"
