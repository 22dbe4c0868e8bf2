#!/usr/bin/env bash
# Regenerates docs/results/robustness.md: a long run of every fuzz target
# (scripts/fuzz.sh --long: RUNS executions each, one target at a time under
# nice -n 19, ASan + UBSan, checksums skipped) and, per target, executions,
# time, edges covered with the seeds alone and at the end, corpus size,
# crashes, and which functions of the reader's source files the run reached.
#
#   scripts/results-robustness.sh              # all targets, 10M runs each (hours)
#   RUNS=1000000 TARGETS="stats config" scripts/results-robustness.sh
#
# Environment: RUNS (default 10000000), TARGETS (default all), WORK (logs and
# corpora, default /tmp/moec-fuzz-long, kept: a target run earlier stays on
# the page until it is run again), REPORT_ONLY=1 (rewrite the page from the
# logs in WORK, running nothing).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
RUNS=${RUNS:-10000000}
WORK=${WORK:-/tmp/moec-fuzz-long}
OUT=docs/results/robustness.md
mkdir -p "$WORK" docs/results
if [ "${REPORT_ONLY:-0}" != 1 ]; then
  rc=0
  WORK=$WORK scripts/fuzz.sh --long "$RUNS" || rc=$?
  [ "$rc" = 0 ] || [ "$rc" = 1 ] || exit "$rc" # 1: a crash, which the page reports
fi
CC_VERSION=$( (clang-14 --version 2>/dev/null || clang --version) | head -1)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)
python3 - "$WORK" "$OUT" "$root" "$CC_VERSION" "$COMMIT$DIRTY" <<'EOF'
import glob, os, re, sys, time

work, out, root, cc, commit = sys.argv[1:6]

# what each target reads, and the source files of that reader
TARGETS = {
    "safetensors": ("safetensors header (`moec_st_open_memory`)", ["formats/safetensors_read.c"]),
    "safetensors_index": ("model.safetensors.index.json and its shards (`moec_st_open_index_memory`)",
                          ["formats/safetensors_read.c"]),
    "config": ("config.json -> model description, slot table, write-back round trip",
               ["formats/hf_config.c", "lib/model/model.c"]),
    "tokenizer": ("tokenizer.json load, then encode and decode", ["lib/tokenizer/"]),
    "tokenize": ("encode/decode of arbitrary bytes with three real tokenizers", ["lib/tokenizer/"]),
    "container": (".moec directory, section table, zstd chunks, blobs", ["formats/container_read.c",
                                                                        "formats/container_sizes.c"]),
    "moec_model": (".moec read as a model: config blob, tensor binding, quantized formats",
                   ["lib/model/model_moec.c", "formats/container_read.c", "lib/core/qformat.c"]),
    "stats": ("calibration statistics file (`moec_stats_load_mem`)", ["lib/calib/stats_io.c"]),
    "mc_jsonl": ("multiple-choice JSONL, tokenized (`moec_mc_parse`)", ["lib/eval/mc_data.c"]),
}

def num(pat, text, default=None, conv=int):
    m = re.findall(pat, text)
    return conv(m[-1]) if m else default

rows, details = [], []
for t, (what, files) in TARGETS.items():
    log = os.path.join(work, "long-%s.log" % t)
    if not os.path.exists(log):
        rows.append("| `%s` | %s | not run | | | | | | |" % (t, what))
        continue
    text = open(log, errors="replace").read()
    runs = num(r"stat::number_of_executed_units:\s+(\d+)", text)
    eps = num(r"stat::average_exec_per_sec:\s+(\d+)", text)
    rss = num(r"stat::peak_rss_mb:\s+(\d+)", text)
    wall = num(r"wall_seconds: (\d+)", text)
    start = re.search(r"INITED cov: (\d+) ft: (\d+) corp: (\d+)/", text)
    end = re.search(r"DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)", text)
    files_n = num(r"corpus_files: (\d+)", text)
    bytes_n = num(r"corpus_bytes: (\d+)", text)
    crashed = bool(re.search(r"ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|SUMMARY: ", text))
    crashes = "**yes** (see log)" if crashed else "0"
    if crashed:
        # a crash input already kept as a regression (tests/fuzz/regress) was fixed after the run
        regress = os.path.join(root, "tests", "fuzz", "regress", t)
        kept = {open(os.path.join(regress, f), "rb").read(): f for f in os.listdir(regress)} if os.path.isdir(regress) else {}
        fixed = [kept[b] for b in (open(c, "rb").read() for c in glob.glob(os.path.join(work, "crash-%s-*" % t))) if b in kept]
        if fixed:
            crashes = "**yes**, fixed since: `tests/fuzz/regress/%s/%s`" % (t, fixed[0])
    cov = "%s -> %s" % (start.group(1) if start else "?", end.group(1) if end else "?")
    ft = end.group(2) if end else "?"
    corpus = "%s files, %.1f KB" % (files_n, (bytes_n or 0) / 1024) if files_n is not None else "?"
    rows.append("| `%s` | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        t, what, "{:,}".format(runs) if runs else "?", "%d min" % round(wall / 60) if wall else "?",
        "{:,}".format(eps) if eps else "?", cov, ft, corpus, crashes))
    # functions of the reader's files: reached or not, edges inside them
    funcs = re.findall(r"(UN)?COVERED_FUNC: hits: (\d+) edges: (\d+)/(\d+) (\S+) (\S+):(\d+)", text)
    lines = []
    for f in files:
        mine = [x for x in funcs if os.path.relpath(x[5], root).startswith(f)]
        if not mine:
            continue
        reached = [x for x in mine if int(x[1]) > 0]
        e_cov = sum(int(x[2]) for x in reached)
        e_all = sum(int(x[3]) for x in reached)
        missed = sorted(set(x[4] for x in mine if int(x[1]) == 0))
        lines.append("- `%s`: %d of %d functions reached; %d of %d edges inside the reached ones covered%s" % (
            f, len(reached), len(mine), e_cov, e_all,
            ("; not reached: " + ", ".join("`%s`" % m for m in missed)) if missed else ""))
    details.append("### `%s`\n\n%s\n" % (t, "\n".join(lines) if lines else "(no coverage listing in the log)"))

page = """# Robustness: fuzzing every reader of outside input

Produced by `scripts/results-robustness.sh` (which runs `scripts/fuzz.sh --long`); do not edit by hand.
Build: %s, `-fsanitize=fuzzer,address,undefined`, `-DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION`
(checksums accepted so mutations reach the parsing behind them; PCRE2 without JIT), commit %s,
written %s. Each target ran under `nice -n 19` on a machine shared with other jobs (one target at a
time per `fuzz.sh --long`, though two such runs may share the machine), so times and executions per
second are only indicative; a target with fewer executions than asked was interrupted. Targets: `tests/fuzz/fuzz_*.c` (each says what it
checks); seeds in `tests/fuzz/corpus/`, inputs that once crashed in `tests/fuzz/regress/` (replayed
by ctest in every build); `tests/fuzz/README.md` says how to run and extend them.

Edges are libFuzzer's `cov`: instrumented edges of the whole program (library, target) reached,
first with the seeds alone (INITED), then at the end of the run (DONE); features (`ft`) also
count edge hit-count buckets. Corpus: inputs kept because they reached something new.

| target | reads | executions | wall | exec/s | edges (seeds -> end) | features | corpus | crashes |
| --- | --- | ---: | ---: | ---: | --- | ---: | --- | --- |
%s

## Where each run reached

From `-print_coverage=1` at the end of each run: the functions of the reader's own source files
that the run entered, and the edges covered inside them. Functions not reached are listed: for
most they are the writers or the file-opening wrappers the in-memory entry point bypasses.

%s""" % (cc, commit, time.strftime("%Y-%m-%d", time.gmtime()), "\n".join(rows), "\n".join(details))
open(out, "w").write(page)
print("results-robustness: wrote %s" % out, file=sys.stderr)
EOF
