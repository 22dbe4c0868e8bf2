#!/usr/bin/env bash
# Regenerates docs/results/real-shapes.md: moec beside llama.cpp at published
# MoE shapes (random weights, exact tensor names, shapes and vocabularies,
# depth cut to a few layers), each pair in the same run, THREADS threads:
#   - decode, BF16 checkpoint (moec-bench) / F16 GGUF of the same weights
#     (llama-bench), tokens per second, weight bytes a step reads, GB/s and
#     the share of this machine's measured read bandwidth (bench-membw);
#   - decode, moec-quant RTN 4-bit g64 with attention and 8-bit embeddings
#     (.moec) / llama-quantize Q4_K_M of the F16 GGUF;
#   - the all-logits prompt path: moec-eval --score-from half / llama-perplexity
#     on windows of 256 tokens (both score the second half of each window and
#     compute logits, and the last layer's feed-forward block, only there);
#     steady-state tokens/s = (WINDOWS - 1)·256 / (time for WINDOWS windows -
#     time for 1), so that loading, mapping and warm-up drop out of both;
#   - mixtral-tiny (the bundled model) through llama-bench / moec-bench, the
#     shape on which moec led before.
# Every run starts from a cold page cache for the files it reads (dd
# iflag=nocache), so each tool maps its weights as it chooses: moec asks for
# 2 MiB pages (MADV_HUGEPAGE), llama.cpp populates 4 KiB mappings; the page
# records how much of each one's resident weights ended up in 2 MiB pages.
#
#   WORK=/scratch/dir scripts/results-real-shapes.sh
#
# WORK (required, outside the repository) holds the checkpoints, GGUFs and
# logs; per shape about 2.5x the checkpoint's size, deleted after the shape
# unless KEEP=1. Environment: BIN (build/bin, Release), THREADS (2),
# DECODE_THREADS (thread counts of the decode pairs, "$THREADS 1": with one
# thread neither tool waits on another thread, so that pair still compares
# the kernels when a busy machine preempts threads), ROUNDS
# (3: each pair is measured ROUNDS times, alternating which tool goes first;
# the tables give the median and the spread of the per-round ratios), GEN
# (decode tokens, 64), WINDOWS (eval windows, 8), SHAPES (space-separated
# NAME:LAYERS[:TESTS]; NAME.json is looked up in ../shared/fixtures/realconfigs/
# and bench/configs/; TESTS is a comma list of bf16, q4, eval, default all;
# default SHAPES "mixtral-8x7b:1 qwen3-30b-a3b:2 qwen3-30b-a3b:4:bf16,eval
# mixtral-8x7b:2:bf16,eval qwen1.5-moe-a2.7b:2": the deeper slices skip the
# 4-bit pair because moec-quant still holds the whole model while it
# quantizes (over 10 GB there), PEER (llama-peer.sh). Benchmark
# commands run with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset.
#
# Sections by other scripts: every executable scripts/real-shapes-*.sh is run
# after the speed runs with WORK, BIN, THREADS and SHAPES in its environment
# and SECTION=<file>; the Markdown it writes to SECTION (its own commands
# included) is appended to the page. SECTIONS=0 skips them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
BIN=${BIN:-build/bin}
THREADS=${THREADS:-2}
DECODE_THREADS=${DECODE_THREADS:-"$THREADS 1"}
ROUNDS=${ROUNDS:-3}
GEN=${GEN:-64}
WINDOWS=${WINDOWS:-8}
SHAPES=${SHAPES:-"mixtral-8x7b:1 qwen3-30b-a3b:2 qwen3-30b-a3b:4:bf16,eval mixtral-8x7b:2:bf16,eval qwen1.5-moe-a2.7b:2"}
PEER=${PEER:-$root/../shared/tools/llama-peer.sh}
OUT=docs/results/real-shapes.md
log() { echo "results-real-shapes: $*" >&2; }
[ -n "${WORK:-}" ] || { log "set WORK to a scratch directory outside the repository"; exit 2; }
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
case "$WORK/" in "$root"/*) log "WORK must be outside the repository"; exit 2 ;; esac
for t in moec-bench moec-eval moec-quant moec-tokenize bench-make-checkpoint bench-membw; do
  [ -x "$BIN/$t" ] || { log "$BIN/$t not found (build Release into build/ or set BIN)"; exit 1; }
done
[ -x "$PEER" ] || { log "$PEER not found (set PEER to llama-peer.sh)"; exit 1; }
mapfile -t peer < <("$PEER" "$root/models/mixtral-tiny")
LB=${peer[0]}
HF2GGUF=$(dirname "$PEER")/hf2gguf.py
PY=/usr/bin/python3
GGUFPY=$(dirname "$LB")/../gguf-py
nobench=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)
CMDS=$WORK/commands.txt
: >"$CMDS"
# run OUT CMD...: runs and records a command, its stdout to OUT and its
# stderr to OUT.err (to $WORK/stderr.log for OUT /dev/null)
run() {
  local out=$1 err
  shift
  err=$out.err
  [ "$out" = /dev/null ] && err=$WORK/stderr.log
  printf '%s\n' "$*" | sed "s|$BIN/|\$BIN/|g; s|$WORK|\$WORK|g; s|$root/||g" >>"$CMDS"
  "$@" >"$out" 2>"$err"
}
# cold FILE_OR_DIR...: drops the files from the page cache
cold() {
  local f
  for f in "$@"; do
    if [ -d "$f" ]; then
      find "$f" -name '*.safetensors' -exec dd if={} iflag=nocache count=0 status=none \;
    else
      dd if="$f" iflag=nocache count=0 status=none
    fi
  done
}
# timed OUT SECONDS_FILE CMD...: wall time of a command
timed() {
  local out=$1 sec=$2
  shift 2
  local t0 t1
  t0=$(date +%s.%N)
  run "$out" "$@"
  t1=$(date +%s.%N)
  awk "BEGIN { print $t1 - $t0 }" >"$sec"
}
# sampled OUT SAMPLE CMD...: also records the largest Rss and FilePmdMapped
# of the process (llama.cpp's weight pages) while it runs
sampled() {
  local out=$1 smp=$2
  shift 2
  printf '%s\n' "$*" | sed "s|$BIN/|\$BIN/|g; s|$WORK|\$WORK|g; s|$root/||g" >>"$CMDS"
  "$@" >"$out" 2>"$out.err" &
  local pid=$! rss=0 huge=0 r h
  while kill -0 "$pid" 2>/dev/null; do
    r=$(awk '/^Rss:/{print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || true)
    h=$(awk '/^FilePmdMapped:/{print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || true)
    [ -n "$r" ] && [ "$r" -gt "$rss" ] && rss=$r
    [ -n "$h" ] && [ "$h" -gt "$huge" ] && huge=$h
    sleep 0.5
  done
  wait "$pid"
  echo "{\"rss_kib\": $rss, \"huge_kib\": $huge}" >"$smp"
}

cat data/corpus/{drama,scripture,python,c}.val.txt >"$WORK/val.txt"

log "memory bandwidth"
run "$WORK/membw-start.json" "${nobench[@]}" "$BIN/bench-membw" --mib 1024 --reps 5 --json

# ---- mixtral-tiny: the lead moec had
log "mixtral-tiny"
TINY=models/mixtral-tiny
gguf() { printf '%s\n' "${peer[@]:1}" | grep -- "-$1.gguf\$"; }
[ -f "$WORK/tiny-rtn4.moec" ] || run /dev/null "$BIN/moec-quant" "$TINY" --method rtn --bits 4 --group 64 --attn \
  --embed-bits 8 --quiet --force -o "$WORK/tiny-rtn4.moec"
for r in $(seq 1 "$ROUNDS"); do
  run "$WORK/tiny-bf16-moec-$r.json" "${nobench[@]}" "$BIN/moec-bench" "$TINY" --threads "$THREADS" --reps 5 --json
  run "$WORK/tiny-bf16-llama-$r.json" "${nobench[@]}" "$LB/llama-bench" -m "$(gguf f16)" -t "$THREADS" -p 512 -n 128 -r 5 -o json
  run "$WORK/tiny-q4-moec-$r.json" "${nobench[@]}" "$BIN/moec-bench" "$WORK/tiny-rtn4.moec" --threads "$THREADS" --reps 5 --json
  run "$WORK/tiny-q4-llama-$r.json" "${nobench[@]}" "$LB/llama-bench" -m "$(gguf Q4_K_M)" -t "$THREADS" -p 512 -n 128 -r 5 -o json
done

# ---- real shapes
config_of() {
  local n=$1
  for d in "$root/../shared/fixtures/realconfigs" "$root/bench/configs"; do
    [ -f "$d/$n.json" ] && { echo "$d/$n.json"; return; }
  done
  log "no config for $n"
  exit 1
}
: >"$WORK/shapes.tsv"
for spec in $SHAPES; do
  IFS=: read -r name layers tests <<<"$spec"
  tests=,${tests:-bf16,q4,eval},
  has() { [[ $tests == *",$1,"* ]]; }
  id=$name-L$layers
  cfg=$(config_of "$name") || exit 1
  hf=$WORK/$id f16=$WORK/$id-f16.gguf q4k=$WORK/$id-Q4_K_M.gguf q4m=$WORK/$id-rtn4.moec
  log "$id: checkpoint, GGUFs, 4-bit"
  [ -d "$hf" ] || run /dev/null "$BIN/bench-make-checkpoint" "$cfg" "$hf" --layers "$layers" \
    --tokenizer models/mixtral-tiny/tokenizer.json
  [ -f "$f16" ] || run /dev/null "$PY" "$HF2GGUF" "$hf" "$f16" f16
  if has q4; then
    [ -f "$q4k" ] || run /dev/null "$LB/llama-quantize" "$f16" "$q4k" Q4_K_M "$THREADS"
    [ -f "$q4m" ] || run /dev/null /usr/bin/time -f '%M %e' -o "$WORK/$id-quant.time" "$BIN/moec-quant" "$hf" \
      --method rtn --bits 4 --group 64 --attn --embed-bits 8 --threads "$THREADS" --quiet --force -o "$q4m"
  fi
  for f in "$hf" "$f16" "$q4k" "$q4m"; do [ -e "$f" ] && du -sb "$f" | awk '{print $1}' || echo 0; done >"$WORK/$id-sizes"
  "$PY" - "$f16" "$q4k" "$GGUFPY" >"$WORK/$id-gguf-bytes.json" <<'PY'
# weight bytes a llama.cpp decode step reads: every 2-D tensor but the
# embedding table, expert tensors at top_k / n_experts of their size
import json, os, sys
sys.path.insert(0, sys.argv[3])
import gguf
out = {}
for key, path in (("f16", sys.argv[1]), ("q4", sys.argv[2])):
    if not os.path.exists(path):
        continue
    r = gguf.GGUFReader(path)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    E = int(r.fields[f"{arch}.expert_count"].parts[-1][0])
    k = int(r.fields[f"{arch}.expert_used_count"].parts[-1][0])
    total = 0.0
    for t in r.tensors:
        if t.name == "token_embd.weight" or len(t.shape) < 2:
            continue
        total += int(t.n_bytes) * (k / E if "_exps" in t.name else 1.0)
    out[key] = total
print(json.dumps(out))
PY
  printf '%s\t%s\t%s\t%s\t%s\n' "$id" "$name" "$layers" "$hf" "$tests" >>"$WORK/shapes.tsv"

  # text of exactly W and of 1 windows for moec-eval (its tokenizer; llama-perplexity takes --chunks)
  for w in "$WINDOWS" 1; do
    "$PY" - "$BIN/moec-tokenize" "$hf" "$WORK/val.txt" $((w * 256)) >"$WORK/$id-eval-$w.txt" <<'PY'
import subprocess, sys
tok, model, path, need = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
lines = open(path, encoding="utf-8").read().splitlines(keepends=True)
def count(n):
    r = subprocess.run([tok, model], input="".join(lines[:n]).encode(), capture_output=True, check=True)
    return len(r.stdout.split())
lo, hi = 1, len(lines)
while lo < hi:  # fewest lines with at least `need` tokens
    mid = (lo + hi) // 2
    if count(mid) >= need:
        hi = mid
    else:
        lo = mid + 1
sys.stdout.write("".join(lines[:lo]))
PY
  done

  log "$id: $ROUNDS rounds"
  for r in $(seq 1 "$ROUNDS"); do
    order="moec llama"
    [ $((r % 2)) -eq 0 ] && order="llama moec"
    for who in $order; do
      p=$WORK/$id-$who-$r
      if [ "$who" = moec ]; then
        for t in $DECODE_THREADS; do
          if has bf16; then
            cold "$hf"
            run "$p-bf16-t$t.json" "${nobench[@]}" "$BIN/moec-bench" "$hf" --threads "$t" --reps 3 --prompt-lengths 8,64 --gen "$GEN" --json
          fi
          if has q4; then
            cold "$q4m"
            run "$p-q4-t$t.json" "${nobench[@]}" "$BIN/moec-bench" "$q4m" --threads "$t" --reps 3 --prompt-lengths 8,64 --gen "$GEN" --json
          fi
        done
        has eval && for w in "$WINDOWS" 1; do
          cold "$hf"
          timed "$p-eval-$w.json" "$p-eval-$w.sec" "${nobench[@]}" "$BIN/moec-eval" --model "$hf" \
            --text "$WORK/$id-eval-$w.txt" --ctx 256 --score-from half --threads "$THREADS" --quiet --json
        done
      else
        for t in $DECODE_THREADS; do
          if has bf16; then
            cold "$f16"
            sampled "$p-bf16-t$t.json" "$p-bf16-t$t.smaps" "${nobench[@]}" "$LB/llama-bench" -m "$f16" -t "$t" -p 0 -n "$GEN" -r 3 -o json
          fi
          if has q4; then
            cold "$q4k"
            sampled "$p-q4-t$t.json" "$p-q4-t$t.smaps" "${nobench[@]}" "$LB/llama-bench" -m "$q4k" -t "$t" -p 0 -n "$GEN" -r 3 -o json
          fi
        done
        has eval && for w in "$WINDOWS" 1; do
          cold "$f16"
          timed "$p-eval-$w.log" "$p-eval-$w.sec" "${nobench[@]}" "$LB/llama-perplexity" -m "$f16" -f "$WORK/val.txt" \
            -c 256 -b 256 --chunks "$w" -t "$THREADS"
        done
      fi
    done
  done
  if [ "${KEEP:-0}" != 1 ]; then
    rm -rf "$hf" "$f16" "$q4k" "$q4m"
  fi
done

log "memory bandwidth again"
run "$WORK/membw-end.json" "${nobench[@]}" "$BIN/bench-membw" --mib 1024 --reps 5 --json

# ---- sections written by other scripts
: >"$WORK/sections.md"
if [ "${SECTIONS:-1}" != 0 ]; then
  for s in scripts/real-shapes-*.sh; do
    [ -x "$s" ] || continue
    sec=$WORK/section-$(basename "$s" .sh).md
    log "section: $s"
    if WORK=$WORK BIN=$BIN THREADS=$THREADS SHAPES=$SHAPES SECTION=$sec "$s"; then
      cat "$sec" >>"$WORK/sections.md"
    else
      printf '\n## %s\n\nThe script failed in this run (exit status %s).\n' "$s" "$?" >>"$WORK/sections.md"
    fi
  done
fi

log "writing $OUT"
"$PY" - "$WORK" "$OUT" "$THREADS" "$ROUNDS" "$GEN" "$WINDOWS" "$(nproc)" "$(uptime)" "$DECODE_THREADS" <<'PY'
import glob, json, os, re, statistics, sys

work, out, threads, rounds, gen, windows, nproc, load, dthreads = sys.argv[1:10]
rounds, gen, windows = int(rounds), int(gen), int(windows)
dthreads = [int(t) for t in dthreads.split()]
MiB = 1048576.0


def jl(path):
    return json.load(open(path))


def med(xs):
    return statistics.median(xs)


def spread(xs):
    m = med(xs)
    return (max(xs) - min(xs)) / m if m else 0.0


def llama_ts(path, n_prompt, n_gen):
    for t in jl(path):
        if t["n_prompt"] == n_prompt and t["n_gen"] == n_gen:
            return med(t["samples_ts"])
    raise SystemExit(f"{path}: no test p{n_prompt} n{n_gen}")


def membw(path):
    r = jl(path)["results"]
    return {(x["test"], x["threads"]): x["median_gbs"] for x in r}


bw0, bw1 = membw(f"{work}/membw-start.json"), membw(f"{work}/membw-end.json")
bw_read = med([bw0[("read", int(threads))], bw1[("read", int(threads))]])
bw_read1 = med([bw0[("read", 1)], bw1[("read", 1)]])
L = []
A = L.append
A("# moec and llama.cpp at published MoE shapes")
A("")
A("Produced by `scripts/results-real-shapes.sh` (every command it ran is listed at the end; `$WORK` is its scratch "
  "directory, `$BIN` the directory of moec's tools). Random-weight checkpoints with the exact published tensor names, shapes, dtypes (BF16) and "
  "vocabularies, depth cut to the layer count in the name (`bench-make-checkpoint`); llama.cpp runs the F16 GGUF of "
  "the same weights (`hf2gguf.py`) and its Q4_K_M; moec runs the checkpoint and `moec-quant` RTN 4-bit, groups of 64, "
  f"attention quantized, embeddings and head 8-bit. {threads} threads on this {nproc}-core machine, OpenBLAS "
  "variables unset; each pair in the same run, "
  f"{rounds} rounds alternating which tool goes first; a ratio is moec / llama.cpp, the median of the {rounds} "
  "rounds' ratios, with their spread ((max - min) / median). The machine is shared: load average at the end "
  f"`{load}`.")
A("")
A(f"Memory bandwidth (`bench-membw`, 1 GiB per thread, median of 5): read {bw0[('read', 1)]:.1f} / "
  f"{bw1[('read', 1)]:.1f} GB/s with 1 thread, {bw0[('read', 2)]:.1f} / {bw1[('read', 2)]:.1f} GB/s with 2 "
  f"(start / end of the run); copy {bw0[('copy', 2)]:.1f}, write {bw0[('write', 2)]:.1f} GB/s with 2 at the start. "
  f"Decode reads its weights once per token, so {bw_read:.1f} GB/s ({threads} threads, median of start and end) is "
  "the ceiling the GB/s columns are held against.")
A("")

# mixtral-tiny
rows = []
for kind, label in (("bf16", "BF16 / F16"), ("q4", "RTN 4-bit g64 / Q4_K_M")):
    pr, dr = [], []
    for r in range(1, rounds + 1):
        m = jl(f"{work}/tiny-{kind}-moec-{r}.json")
        lf = f"{work}/tiny-{kind}-llama-{r}.json"
        pr.append((m["pp512_tps"], llama_ts(lf, 512, 0)))
        dr.append((m["tg128_tps"], llama_ts(lf, 0, 128)))
    rows.append((label, pr, dr))
A("## mixtral-tiny (the bundled model, 4 layers)")
A("")
A("| weights | pp512 moec / llama.cpp tok/s | ratio | tg128 moec / llama.cpp tok/s | ratio |")
A("|---|---|---|---|---|")
for label, pr, dr in rows:
    rp, rd = [a / b for a, b in pr], [a / b for a, b in dr]
    A(f"| {label} | {med([a for a, _ in pr]):.0f} / {med([b for _, b in pr]):.0f} | {med(rp):.2f}x "
      f"(±{spread(rp) * 50:.0f}%) | {med([a for a, _ in dr]):.0f} / {med([b for _, b in dr]):.0f} | "
      f"{med(rd):.2f}x (±{spread(rd) * 50:.0f}%) |")
A("")
A("llama-bench's pp512 computes the last layer's feed-forward block for the last token only; moec-bench's prompt "
  "test does the same since this issue (logits of the last token only).")
A("")

shapes = [l.rstrip("\n").split("\t") for l in open(f"{work}/shapes.tsv")]
dec, evl, det = [], [], []
for sid, name, layers, _, tests in shapes:
    sizes = [int(x) for x in open(f"{work}/{sid}-sizes").read().split()]
    gb = jl(f"{work}/{sid}-gguf-bytes.json")
    qt = open(f"{work}/{sid}-quant.time").read().split() if os.path.exists(f"{work}/{sid}-quant.time") else None
    res = {}
    for kind in ("bf16", "q4"):
        if f",{kind}," not in tests:
            continue
        for t in dthreads:
            mt, lt, mb, lhuge, lrss, mhuge, mrss = [], [], [], [], [], [], []
            for r in range(1, rounds + 1):
                m = jl(f"{work}/{sid}-moec-{r}-{kind}-t{t}.json")
                mt.append(m[f"tg{gen}_tps"])
                mb.append(m["decode_weight_bytes_per_token"])
                mhuge.append(m["rss_weights_huge_bytes"])
                mrss.append(m["rss_weights_bytes"])
                lt.append(llama_ts(f"{work}/{sid}-llama-{r}-{kind}-t{t}.json", 0, gen))
                s = jl(f"{work}/{sid}-llama-{r}-{kind}-t{t}.smaps")
                lhuge.append(s["huge_kib"] * 1024.0)
                lrss.append(s["rss_kib"] * 1024.0)
            res[(kind, t)] = (mt, lt, med(mb), gb["f16" if kind == "bf16" else "q4"], med(mhuge) / max(med(mrss), 1),
                              med(lhuge) / max(med(lrss), 1), med(mrss), med(lrss))
    ev = []
    for r in range(1, rounds + 1 if ",eval," in tests else 1):
        ms = [float(open(f"{work}/{sid}-moec-{r}-eval-{w}.sec").read()) for w in (windows, 1)]
        ls = [float(open(f"{work}/{sid}-llama-{r}-eval-{w}.sec").read()) for w in (windows, 1)]
        tok = (windows - 1) * 256
        ev.append((tok / (ms[0] - ms[1]), tok / (ls[0] - ls[1]), windows * 256 / ms[0], windows * 256 / ls[0]))
        # both ran every window (127 scored positions each); their perplexities cross-check the two executors
        lt = open(f"{work}/{sid}-llama-{r}-eval-{windows}.log.err", errors="replace").read()
        chunks = re.search(r"calculating perplexity over (\d+) chunks", lt)
        lppl = re.search(r"Final estimate: PPL = ([0-9.]+)", lt)
        mw = jl(f"{work}/{sid}-moec-{r}-eval-{windows}.json")
        assert chunks and int(chunks.group(1)) == windows, f"{sid}: llama-perplexity ran {chunks and chunks.group(1)} chunks"
        assert mw["tokens"] == windows * 127, f"{sid}: moec-eval scored {mw['tokens']} positions"
        ppl = (mw["perplexity"], float(lppl.group(1)) if lppl else float("nan"))
    if res:
        dec.append((sid, res))
    if ev:
        evl.append((sid, ev, ppl))
    det.append((sid, sizes, qt))

A("## Decode")
A("")
A(f"tg{gen}: {gen} tokens generated one at a time from an empty cache (`moec-bench --gen {gen}`, `llama-bench -p 0 "
  f"-n {gen}`, 3 repetitions each, median), with {threads} threads and with 1 (one thread waits on no other, so "
  "that pair compares the kernels even while the machine's other jobs preempt threads). MiB/token: weight bytes a step reads (moec-bench counts them; for "
  "llama.cpp, the GGUF's tensors with experts at top_k / experts of their size, embedding table excluded). "
  f"% of bandwidth: GB/s over the read bandwidth measured above with as many threads. 2 MiB pages: share of the process's resident "
  "weight pages mapped as 2 MiB pages (moec-bench reads its smaps; llama-bench's were sampled while it ran).")
A("")
A("| shape | weights | threads | moec tok/s | llama.cpp tok/s | ratio | moec MiB/tok, GB/s, % bw "
  "| llama.cpp MiB/tok, GB/s, % bw | 2 MiB pages moec / llama.cpp |")
A("|---|---|---|---|---|---|---|---|---|")
for sid, res in dec:
    for kind, label in (("bf16", "BF16 / F16"), ("q4", "4-bit / Q4_K_M")):
        for t in dthreads:
            if (kind, t) not in res:
                continue
            mt, lt, mb, lb, mh, lh, _, _ = res[(kind, t)]
            rat = [a / b for a, b in zip(mt, lt)]
            mg, lg = mb * med(mt) / 1e9, lb * med(lt) / 1e9
            bw = bw_read if t == int(threads) else bw_read1
            A(f"| {sid} | {label} | {t} | {med(mt):.1f} | {med(lt):.1f} | **{med(rat):.2f}x** (±{spread(rat) * 50:.0f}%) | "
              f"{mb / MiB:.0f}, {mg:.1f}, {100 * mg / bw:.0f}% | {lb / MiB:.0f}, {lg:.1f}, {100 * lg / bw:.0f}% | "
              f"{100 * mh:.0f}% / {100 * lh:.0f}% |")
A("")
A("## The all-logits prompt path")
A("")
A(f"`moec-eval --ctx 256 --score-from half` beside `llama-perplexity -c 256 -b 256`: both run windows of 256 tokens "
  "from an empty cache and score the second half of each, so both compute logits (and the last layer's "
  f"feed-forward block) for 128 tokens of each window. Steady state: ({windows} - 1) x 256 tokens over the "
  f"difference between a {windows}-window run and a 1-window run of the same tool (loading, mapping, warm-up "
  f"drop out); whole run: {windows} x 256 tokens over the {windows}-window run's wall time.")
A("")
A("| shape | moec tok/s | llama.cpp tok/s | ratio | whole run moec / llama.cpp tok/s | ratio | perplexity moec / llama.cpp |")
A("|---|---|---|---|---|---|---|")
for sid, ev, ppl in evl:
    rs = [a / b for a, b, _, _ in ev]
    rw = [c / d for _, _, c, d in ev]
    A(f"| {sid} | {med([a for a, _, _, _ in ev]):.1f} | {med([b for _, b, _, _ in ev]):.1f} | **{med(rs):.2f}x** "
      f"(±{spread(rs) * 50:.0f}%) | {med([c for _, _, c, _ in ev]):.1f} / {med([d for _, _, _, d in ev]):.1f} | "
      f"{med(rw):.2f}x | {ppl[0]:.1f} / {ppl[1]:.1f} |")
A("")
A("The perplexities (of a random-weight model on the corpus, so large) are the same computation done by two "
  "executors: their agreement checks that both ran the same windows and positions.")
A("")
A("## Files")
A("")
A("| shape | checkpoint | F16 GGUF | Q4_K_M | moec 4-bit | moec-quant peak RSS, time |")
A("|---|---|---|---|---|---|")
for sid, sizes, qt in det:
    qs = f"{int(qt[0]) / 1024:.0f} MiB, {float(qt[1]):.0f} s" if qt else "-"
    sz = [f"{x / MiB:.0f} MiB" if x else "-" for x in sizes]
    A(f"| {sid} | {sz[0]} | {sz[1]} | {sz[2]} | {sz[3]} | {qs} |")
A("")
A("Memory while decoding (moec-bench's own report, median over rounds): resident weight pages, BF16 / 4-bit.")
A("")
for sid, res in dec:
    g = lambda k, i: f"{res[(k, int(threads))][i] / MiB:.0f}" if (k, int(threads)) in res else "-"
    A(f"- {sid}: moec {g('bf16', 6)} / {g('q4', 6)} MiB, llama.cpp (largest Rss sampled) "
      f"{g('bf16', 7)} / {g('q4', 7)} MiB")
A("")
sec = open(f"{work}/sections.md").read()
if sec.strip():
    L.append(sec.rstrip("\n"))
    A("")
A("## Commands")
A("")
A("```")
L.extend(l.rstrip("\n") for l in open(f"{work}/commands.txt"))
A("```")
open(out, "w").write("\n".join(L) + "\n")
PY
log "done"
