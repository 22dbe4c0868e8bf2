#!/usr/bin/env bash
# Compression at published shapes: peak memory and time of every
# compression tool on random-weight checkpoints of Qwen3-30B-A3B and
# Mixtral-8x7B (bench-make-checkpoint, layers cut to a few), each run in a
# cgroup memory group, against the bound 1.5 x the largest layer's bytes
# + 1 GiB; depth flatness (a 4-layer Qwen3 slice against a 2-layer one);
# GPTQ's update rate against sgemm (bench-gptq); and a checkpoint larger
# than the memory the process may use, compressed under a cgroup limit and
# compared byte for byte with the unlimited run. Writes the markdown
# section to $OUT (default docs/results/real-shapes-compress.md) with every
# command, for docs/results/real-shapes.md.
#
#   scripts/real-shapes-compress.sh SCRATCH_DIR
#
# SCRATCH_DIR holds the checkpoints and outputs (up to ~18 GB at once; never
# the repository). Environment: BIN (default build/bin, Release), THREADS
# (2), TOKENS (calibration tokens, 2048), LIMIT (the cgroup limit of the
# measured runs, default 12 GiB: a runaway cannot take the machine down),
# SMALL_LIMIT (the larger-than-memory run's limit, default 2.5 GiB), SHAPES
# (default "qwen3:2 qwen3:4 mixtral:1"), ONLY ("step ..." to run only these
# steps), KEEP=1 (keep checkpoints and outputs), REPORT_ONLY=1 (rewrite the
# page from SCRATCH_DIR/log). Needs root for the cgroup (v1 memory
# controller at /sys/fs/cgroup/memory); without it runs are unlimited and
# the page says so. OpenBLAS's OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are
# unset inside every measured command.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# run as a section of scripts/results-real-shapes.sh: WORK and SECTION from
# it; its SHAPES name the speed runs' shapes, not these
if [ $# -eq 0 ] && [ -n "${WORK:-}" ] && [ -n "${SECTION:-}" ]; then
  set -- "$WORK/compress"
  OUT=$SECTION
  SHAPES=${COMPRESS_SHAPES:-}
fi
[ $# -eq 1 ] || { echo "usage: scripts/real-shapes-compress.sh SCRATCH_DIR" >&2; exit 2; }
S=$(mkdir -p "$1" && cd "$1" && pwd)
BIN=${BIN:-build/bin}
BIN=$(cd "$BIN" && pwd)
THREADS=${THREADS:-2}
TOKENS=${TOKENS:-2048}
LIMIT=${LIMIT:-$((12 << 30))}
SMALL_LIMIT=${SMALL_LIMIT:-$((5 << 29))}
SHAPES=${SHAPES:-"qwen3:2 qwen3:4 mixtral:1"} # in a section: COMPRESS_SHAPES
ONLY=${ONLY:-}
OUT=${OUT:-docs/results/real-shapes-compress.md}
LOG=$S/log
mkdir -p "$LOG"
CORPUS=$root/data/corpus
CFG=$root/../shared/fixtures/realconfigs
TOK=$root/models/mixtral-tiny/tokenizer.json
log() { echo "real-shapes-compress: $*" >&2; }
want() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }

CG=/sys/fs/cgroup/memory
if [ -w "$CG" ]; then have_cg=1; else have_cg=0; log "no writable cgroup v1 memory controller: runs are not limited"; fi

# measure NAME LIMIT CMD...: runs CMD (OpenBLAS variables unset) in a fresh
# memory cgroup of LIMIT bytes; records the command, exit status, peak RSS
# (GNU time), wall seconds and the group's peak usage (RSS + page cache).
measure() {
  local name=$1 limit=$2
  shift 2
  printf '%q ' "$@" | sed "s|$BIN/|\$BIN/|g; s|$S/|\$S/|g; s|$root/||g" >"$LOG/$name.cmd"
  local tf cg rc
  tf=$(mktemp)
  cg=$CG/moec-rsc-$$-$name
  log "$name"
  if [ "$have_cg" = 1 ]; then
    mkdir -p "$cg"
    echo "$limit" >"$cg/memory.limit_in_bytes"
    set +e
    (echo $BASHPID >"$cg/cgroup.procs"; exec env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/time -f "%M %e" -o "$tf" nice "$@")
    rc=$?
    set -e
    echo "$rc $(cat "$tf") $(cat "$cg/memory.max_usage_in_bytes") $limit" >"$LOG/$name.tsv"
    rmdir "$cg" 2>/dev/null || true
  else
    set +e
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/time -f "%M %e" -o "$tf" nice "$@"
    rc=$?
    set -e
    echo "$rc $(cat "$tf") 0 0" >"$LOG/$name.tsv"
  fi
  rm -f "$tf"
  [ "$rc" = 0 ] || log "$name failed (exit $rc)"
}

train=()
for d in drama scripture python c; do train+=(--text "$CORPUS/$d.train.txt"); done

# digest of the tensors of an output: the safetensors bytes of an HF
# directory; for a .moec, every tensor's name and XXH3 checksum from the
# container's directory (docs/format.md; each checksum covers the tensor's
# entry and stored bytes), since its report.json carries timings
digest() {
  if [ -d "$1" ]; then cat "$1"/*.safetensors | sha256sum | cut -c1-16
  else
    python3 - "$1" <<'PY'
import hashlib, struct, sys
f = open(sys.argv[1], "rb")
h = f.read(64)
dir_off, dir_size = struct.unpack_from("<QQ", h, 24)
n_blobs, n_tensors = struct.unpack_from("<II", h, 40)
f.seek(dir_off)
d = f.read(dir_size)
pad8 = lambda n: (n + 7) // 8 * 8
at = 0
for _ in range(n_blobs):
    at += 32 + pad8(struct.unpack_from("<H", d, at + 8)[0])
out = hashlib.sha256()
for _ in range(n_tensors):
    ck, nl = struct.unpack_from("<QH", d, at)
    ns = d[at + 14]
    name = d[at + 56 + 32 * ns: at + 56 + 32 * ns + nl]
    out.update(name + struct.pack("<Q", ck))
    at += 56 + 32 * ns + pad8(nl)
print(out.hexdigest()[:16])
PY
  fi
}

run_shape() {
  local arch=$1 layers=$2 tag=$1-$2 cfg ckpt
  cfg=$CFG/$([ "$arch" = qwen3 ] && echo qwen3-30b-a3b.json || echo mixtral-8x7b.json)
  ckpt=$S/$tag
  if [ ! -d "$ckpt" ]; then
    log "checkpoint $tag"
    "$BIN/bench-make-checkpoint" "$cfg" "$ckpt" --layers "$layers" --tokenizer "$TOK" >/dev/null 2>&1
  fi
  echo "$layers $(du -sb "$ckpt" | cut -f1)" >"$LOG/$tag.ckpt"
  python3 - "$ckpt" >"$LOG/$tag.layer" <<'EOF'
import json, os, re, struct, sys
d = sys.argv[1]
per = {}
for f in sorted(os.listdir(d)):
    if not f.endswith(".safetensors"): continue
    with open(os.path.join(d, f), "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        h = json.loads(fh.read(n))
    for k, v in h.items():
        if k == "__metadata__": continue
        m = re.match(r"model\.layers\.(\d+)\.", k)
        if m:
            per[int(m.group(1))] = per.get(int(m.group(1)), 0) + v["data_offsets"][1] - v["data_offsets"][0]
print(max(per.values()))
EOF
  local st=$S/$tag.stats keep
  keep=$([ "$arch" = qwen3 ] && echo 96 || echo 6)
  local big=0
  [ "$arch" = mixtral ] || [ "$layers" -le 2 ] && big=1
  want calib && measure "$tag-calib" "$LIMIT" "$BIN/moec-calib" "$ckpt" "${train[@]}" --tokens "$TOKENS" --threads "$THREADS" --quiet -o "$st"
  want rtn && measure "$tag-rtn" "$LIMIT" "$BIN/moec-quant" "$ckpt" --bits 4 --group 64 --threads "$THREADS" --quiet --force -o "$S/$tag-rtn.moec"
  want rtn && [ -f "$S/$tag-rtn.moec" ] && { digest "$S/$tag-rtn.moec" >"$LOG/$tag-rtn.digest" || true; }
  rm -f "$S/$tag-rtn.moec"
  want gptq && measure "$tag-gptq" "$LIMIT" "$BIN/moec-quant" "$ckpt" --method gptq --bits 4 --group 64 "${train[@]}" --tokens "$TOKENS" --threads "$THREADS" --quiet --force -o "$S/$tag-gptq.moec" &&
    [ -f "$S/$tag-gptq.moec" ] && { digest "$S/$tag-gptq.moec" >"$LOG/$tag-gptq.digest" || true; }
  want export && [ -f "$S/$tag-gptq.moec" ] && measure "$tag-export" "$LIMIT" "$BIN/moec-export" "$S/$tag-gptq.moec" --hf "$S/$tag-gptq.hf" --quiet --force
  rm -rf "$S/$tag-gptq.hf"
  for p in freq easyep stun dern; do
    # DERN and STUN (and Sub-MoE below) once per shape: the 4-layer slice only checks flatness
    if [ "$big" = 1 ] || [ "$p" = freq ] || [ "$p" = easyep ]; then
      want "$p" && measure "$tag-$p" "$LIMIT" "$BIN/moec-prune" "$ckpt" --method "$p" --keep "$keep" --stats "$st" --threads "$THREADS" --quiet --force -o "$S/$tag-$p"
      [ "$p" = freq ] && want freq && [ -d "$S/$tag-freq" ] && { digest "$S/$tag-freq" >"$LOG/$tag-freq.digest" || true; }
      rm -rf "$S/$tag-$p"
    fi
  done
  if [ "$big" = 1 ]; then
    want submoe && measure "$tag-submoe" "$LIMIT" "$BIN/moec-merge" "$ckpt" --method submoe --keep "$keep" --stats "$st" --threads "$THREADS" --quiet --force -o "$S/$tag-submoe"
    rm -rf "$S/$tag-submoe"
  fi
  [ "${KEEP:-0}" = 1 ] || rm -f "$S/$tag-gptq.moec"
}

# A checkpoint larger than the memory the process may use: the 4-layer Qwen3
# slice (6.2 GB) under SMALL_LIMIT, RTN and frequency pruning, compared with
# the unlimited runs above.
run_small_limit() {
  local tag=qwen3-4 ckpt=$S/qwen3-4
  [ -d "$ckpt" ] || return 0
  want limited-rtn && measure "$tag-rtn-limited" "$SMALL_LIMIT" "$BIN/moec-quant" "$ckpt" --bits 4 --group 64 --threads "$THREADS" --quiet --force -o "$S/$tag-rtn-limited.moec" &&
    [ -f "$S/$tag-rtn-limited.moec" ] && { digest "$S/$tag-rtn-limited.moec" >"$LOG/$tag-rtn-limited.digest" || true; }
  rm -f "$S/$tag-rtn-limited.moec"
  want limited-freq && measure "$tag-freq-limited" "$SMALL_LIMIT" "$BIN/moec-prune" "$ckpt" --method freq --keep 96 --stats "$S/$tag.stats" --threads "$THREADS" --quiet --force -o "$S/$tag-freq-limited" &&
    [ -d "$S/$tag-freq-limited" ] && { digest "$S/$tag-freq-limited" >"$LOG/$tag-freq-limited.digest" || true; }
  rm -rf "$S/$tag-freq-limited"
  want limited-gptq && measure "$tag-gptq-limited" "$SMALL_LIMIT" "$BIN/moec-quant" "$ckpt" --method gptq --bits 4 --group 64 "${train[@]}" --tokens "$TOKENS" --threads "$THREADS" --quiet --force -o "$S/$tag-gptq-limited.moec" &&
    [ -f "$S/$tag-gptq-limited.moec" ] && { digest "$S/$tag-gptq-limited.moec" >"$LOG/$tag-gptq-limited.digest" || true; }
  rm -f "$S/$tag-gptq-limited.moec"
}

if [ "${REPORT_ONLY:-0}" != 1 ]; then
  for t in moec-calib moec-quant moec-prune moec-merge moec-export bench-make-checkpoint bench-gptq; do
    [ -x "$BIN/$t" ] || { echo "real-shapes-compress: $BIN/$t not found (build Release or set BIN)" >&2; exit 1; }
  done
  for sh in $SHAPES; do
    run_shape "${sh%%:*}" "${sh##*:}"
    [ "$sh" = qwen3:4 ] && run_small_limit
    [ "${KEEP:-0}" = 1 ] || rm -rf "$S/${sh%%:*}-${sh##*:}"
  done
  if want bench-gptq; then
    printf '%q ' "$BIN/bench-gptq" --mixtral | sed "s|$BIN/|\$BIN/|g" >"$LOG/bench-gptq.cmd"
    log "bench-gptq"
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE nice "$BIN/bench-gptq" --mixtral >"$LOG/bench-gptq.txt"
  fi
fi

python3 - "$LOG" "$have_cg" "$LIMIT" "$SMALL_LIMIT" "$TOKENS" "$THREADS" >"$OUT" <<'EOF'
import os, sys
log, have_cg, limit, small, tokens, threads = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
def rd(n):
    p = os.path.join(log, n)
    return open(p).read().strip() if os.path.exists(p) else None
def run(n):
    t = rd(n + ".tsv")
    if not t: return None
    rc, rss_kb, wall, cgmax, lim = t.split()
    return dict(rc=int(rc), rss=int(rss_kb) * 1024, wall=float(wall), cg=int(cgmax), cmd=rd(n + ".cmd"))
G = 1 << 30
def gib(b): return f"{b / G:.2f}"
shapes = [("qwen3-2", "Qwen3-30B-A3B, 2 layers"), ("qwen3-4", "Qwen3-30B-A3B, 4 layers"), ("mixtral-1", "Mixtral-8x7B, 1 layer")]
steps = [("calib", "calibration (moec-calib)"), ("rtn", "RTN 4-bit g64 (moec-quant)"), ("gptq", f"GPTQ 4-bit g64, {tokens} tokens (moec-quant)"),
         ("export", "export of the GPTQ .moec to BF16 HF (moec-export)"), ("freq", "frequency pruning (moec-prune)"),
         ("easyep", "EASY-EP pruning (moec-prune)"), ("stun", "STUN pruning (moec-prune)"), ("dern", "DERN pruning (moec-prune)"),
         ("submoe", "Sub-MoE merging (moec-merge)")]
o = []
o.append("## Compression at real shapes\n")
o.append(f"Every compression tool on random-weight BF16 checkpoints at the published shapes (`bench-make-checkpoint`, "
         f"layers cut as shown), {threads} threads, calibration on the four `corpus/*.train.txt` ({tokens} tokens, windows of 256). "
         "Each run goes through the layer-streaming pipeline (`lib/pipeline`): calibration hidden states are kept between layers, "
         "each finished layer is written and released, and the source's pages of a finished layer are released. "
         + ("Each run was made in its own cgroup v1 memory group limited to "
            f"{gib(limit)} GiB (so a runaway could not take the machine down). " if have_cg else
            "No cgroup could be created: runs were not limited. ")
         + "Peak RSS is GNU time's maximum resident set size; *cgroup peak* is the group's maximum usage, which also counts the page "
         "cache of the files read and written. The bound is the issue's: 1.5 x the largest layer's bytes + 1 GiB. Seconds per layer "
         "are the wall time divided by the layers, so they carry the embedding, head and verify passes too. OpenBLAS variables are "
         "unset inside every command. Produced by `scripts/real-shapes-compress.sh` (commands below each table; `$BIN` is `build/bin`, "
         "`$S` the scratch directory).\n")
for tag, title in shapes:
    ck = rd(tag + ".ckpt"); lay = rd(tag + ".layer")
    if not ck or not lay: continue
    layers, size = map(int, ck.split()); lay = int(lay)
    bound = 1.5 * lay + G
    o.append(f"### {title}\n")
    o.append(f"Checkpoint {size / 1e9:.2f} GB, largest layer {lay / 1e9:.3f} GB: bound {gib(bound)} GiB.\n")
    o.append("| step | peak RSS GiB | within bound | cgroup peak GiB | wall s | s / layer |")
    o.append("|---|---|---|---|---|---|")
    cmds = []
    for key, name in steps:
        r = run(f"{tag}-{key}")
        if not r: continue
        if r["rc"] != 0:
            o.append(f"| {name} | failed (exit {r['rc']}) | | | | |")
        else:
            o.append(f"| {name} | {gib(r['rss'])} | {'yes' if r['rss'] <= bound else '**no**'} | {gib(r['cg'])} | {r['wall']:.0f} | {r['wall'] / layers:.0f} |")
        cmds.append(r["cmd"])
    o.append("\n```sh\n" + "\n".join(cmds) + "\n```\n")
# depth
a = {k: run(f"qwen3-2-{k}") for k, _ in steps}; b = {k: run(f"qwen3-4-{k}") for k, _ in steps}
rows = [(n, a[k], b[k]) for k, n in steps if a.get(k) and b.get(k) and a[k]["rc"] == 0 and b[k]["rc"] == 0]
if rows:
    o.append("### Flat in depth: Qwen3-30B-A3B, 4 layers against 2\n")
    o.append("| step | peak RSS 2 layers GiB | 4 layers GiB | 4 / 2 |")
    o.append("|---|---|---|---|")
    for n, x, y in rows:
        o.append(f"| {n} | {gib(x['rss'])} | {gib(y['rss'])} | {y['rss'] / x['rss']:.3f} |")
    o.append("")
# larger than memory
lim = [(k, run(f"qwen3-4-{k}-limited"), rd(f"qwen3-4-{k}-limited.digest"), rd(f"qwen3-4-{k}.digest")) for k in ("rtn", "freq", "gptq")]
lim = [x for x in lim if x[1]]
if lim:
    ck = rd("qwen3-4.ckpt")
    size = int(ck.split()[1]) if ck else 0
    o.append("### A checkpoint larger than the memory the process may use\n")
    o.append(f"The 4-layer Qwen3 slice ({size / 1e9:.2f} GB) compressed in a cgroup v1 memory group limited to {gib(small)} GiB "
             "(`memory.limit_in_bytes`; the limit covers the process's resident memory and the page cache it uses, so the checkpoint "
             "cannot be held), against the unlimited run above. Outputs are compared by the SHA-256 of their tensor bytes "
             "(for a `.moec`, every tensor's XXH3 checksum from its directory, which covers the tensor's entry and stored bytes: its `report.json` records timings, which differ).\n")
    o.append("| step | exit | peak RSS GiB | cgroup peak GiB | wall s | tensors limited | unlimited | same |")
    o.append("|---|---|---|---|---|---|---|---|")
    cmds = []
    for k, r, dl, du in lim:
        o.append(f"| {k} | {r['rc']} | {gib(r['rss'])} | {gib(r['cg'])} | {r['wall']:.0f} | {dl or '-'} | {du or '-'} | {'yes' if dl and dl == du else '**no**'} |")
        cmds.append(r["cmd"])
    o.append("\n```sh\n" + "\n".join(cmds) + "\n```\n")
bg = rd("bench-gptq.txt")
if bg:
    o.append("### GPTQ's updates against sgemm\n")
    o.append("`bench-gptq` on one thread (as each recipe worker runs), per expert matrix shape: the Hessian accumulation, the inverse-"
             "Hessian factor and the quantization, with the GFLOP/s of its column updates against a plain sgemm of its block-update shape "
             "(M = rows, N = cols - 128, K = 128).\n")
    o.append("```\n$ " + rd("bench-gptq.cmd") + "\n" + bg + "\n```\n")
print("\n".join(o))
EOF
log "wrote $OUT"
