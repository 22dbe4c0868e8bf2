#!/usr/bin/env bash
# Faults while the writing tools run (moec-prune, moec-merge, moec-quant,
# moec-export, moec-calib), through the real binaries:
#   - the output is the input (same path, a symlink, a hard link, inside it,
#     or holding it): refused with one line, exit 1, the input untouched;
#   - out of space part-way (a small tmpfs; skipped with a message where
#     mount is not permitted): one line, exit 1, no partial output and no
#     temporary left, an existing output untouched;
#   - SIGKILL while the output is being written and at other moments: the
#     output path holds the old output or the complete new one, never a part;
#   - SIGINT while the output is being written: the tool dies of SIGINT and
#     its temporaries are gone, the old output untouched.
#   tests/cli_faults.sh BIN_DIR SOURCE_DIR
set -u
bin=$1
src=$2
model=$src/tests/fixtures/qwen3moe-random
text=$src/data/corpus/c.val.txt
tmp=$(mktemp -d)
mkdir -p "$tmp/fs"
fs=$tmp/fs
mounted=0
cleanup() {
  [ "$mounted" = 1 ] && umount "$fs" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
fails=0
pass=0
# A background job of a script starts with SIGINT ignored (and the tools
# then leave it so); perl restores the default a terminal's Ctrl-C meets and
# execs the tool in its place.
restore_sigint='$SIG{INT} = "DEFAULT"; exec @ARGV or die "exec: $!"'

fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
ok() { pass=$((pass + 1)); }

# expect1 DESCRIPTION -- COMMAND...: exit 1 with exactly one line on stderr
expect1() {
  local what=$1
  shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  local got=$?
  if [ "$got" -ne 1 ]; then fail "$what: exit $got, expected 1"; cat "$tmp/err"; return 1; fi
  if [ "$(wc -l <"$tmp/err")" -ne 1 ]; then fail "$what: expected one line on stderr"; cat "$tmp/err"; return 1; fi
  ok
}

# a fingerprint of a file or directory tree (contents and names)
digest() {
  if [ -d "$1" ]; then (cd "$1" && find . -type f -print0 | sort -z | xargs -0 -r md5sum | md5sum)
  elif [ -e "$1" ]; then md5sum <"$1"
  else echo absent; fi
}

leftovers() { compgen -G "$1.tmp*" || true; }

# ---- inputs ----------------------------------------------------------------
head -c 4000 "$text" >"$tmp/small.txt"
"$bin/moec-calib" "$model" --text "$tmp/small.txt" --tokens 256 --ctx 64 --quiet -o "$tmp/s.stats" \
  >/dev/null 2>"$tmp/err" || { echo "FAIL: calibration"; cat "$tmp/err"; exit 1; }
"$bin/moec-quant" "$model" --bits 4 --quiet -o "$tmp/q.moec" >/dev/null 2>"$tmp/err" ||
  { echo "FAIL: quantization"; cat "$tmp/err"; exit 1; }

# The five writers: cmd_TOOL OUT sets CMD to the command line writing OUT
# (run as "${CMD[@]}", so that a background job's pid is the tool's own).
cmd_prune() { CMD=("$bin/moec-prune" "$model" --method freq --keep 4 --stats "$tmp/s.stats" --force --quiet -o "$1"); }
cmd_merge() { CMD=("$bin/moec-merge" "$model" --method average --keep 4 --stats "$tmp/s.stats" --force --quiet -o "$1"); }
cmd_quant() { CMD=("$bin/moec-quant" "$model" --bits 3 --force --quiet -o "$1"); }
cmd_export() { CMD=("$bin/moec-export" "$tmp/q.moec" --force --quiet --hf "$1"); }
cmd_calib() { CMD=("$bin/moec-calib" "$model" --text "$tmp/small.txt" --tokens 256 --ctx 64 --quiet -o "$1"); }
run() { "cmd_$1" "$2"; "${CMD[@]}"; }
tools="prune merge quant export calib"

# reference outputs (complete, on the ordinary file system) and old outputs
# of another run to be replaced
mkdir -p "$tmp/ref" "$tmp/old"
for t in $tools; do
  run "$t" "$tmp/ref/$t" >/dev/null || { echo "FAIL: reference output of $t"; exit 1; }
done
"$bin/moec-prune" "$model" --method freq --keep 6 --stats "$tmp/s.stats" --quiet -o "$tmp/old/prune" >/dev/null &&
  "$bin/moec-merge" "$model" --method average --keep 6 --stats "$tmp/s.stats" --quiet -o "$tmp/old/merge" \
    >/dev/null && "$bin/moec-quant" "$model" --bits 8 --quiet -o "$tmp/old/quant" >/dev/null &&
  cp -r "$model" "$tmp/old/export" &&
  "$bin/moec-calib" "$model" --text "$tmp/small.txt" --tokens 128 --ctx 64 --quiet -o "$tmp/old/calib" \
    >/dev/null || { echo "FAIL: old outputs"; exit 1; }
for t in $tools; do
  [ "$(digest "$tmp/old/$t")" != "$(digest "$tmp/ref/$t")" ] || { echo "FAIL: old and new $t outputs agree"; exit 1; }
done

# ---- the output is the input -----------------------------------------------
cp -r "$model" "$tmp/m"
ln -s "$tmp/m" "$tmp/m-link"
cp "$tmp/q.moec" "$tmp/q2.moec"
ln "$tmp/q2.moec" "$tmp/q2-hardlink.moec"
before=$(digest "$tmp/m")
S=(--stats "$tmp/s.stats")
expect1 "prune -o the model" -- "$bin/moec-prune" "$tmp/m" --method freq --keep 4 "${S[@]}" --force -o "$tmp/m"
expect1 "prune -o a symlink to the model" -- "$bin/moec-prune" "$tmp/m" --method freq --keep 4 "${S[@]}" --force \
  -o "$tmp/m-link"
expect1 "prune -o the model spelled differently" -- "$bin/moec-prune" "$tmp/m" --method freq --keep 4 "${S[@]}" \
  --force -o "$tmp/./fs/../m/"
expect1 "merge -o a directory inside the model" -- "$bin/moec-merge" "$tmp/m" --method average --keep 4 "${S[@]}" \
  -o "$tmp/m/merged"
expect1 "merge -o the directory holding the model" -- "$bin/moec-merge" "$tmp/m-link" --method average --keep 4 \
  "${S[@]}" --force -o "$tmp"
expect1 "quant -o the model" -- "$bin/moec-quant" "$tmp/m" --bits 4 --force -o "$tmp/m-link"
expect1 "calib -o the model's weights" -- "$bin/moec-calib" "$tmp/m" --text "$tmp/small.txt" -o "$tmp/m/model.safetensors"
[ "$(digest "$tmp/m")" = "$before" ] && ok || fail "the input model changed"
qbefore=$(digest "$tmp/q2.moec")
expect1 "export --hf the .moec" -- "$bin/moec-export" "$tmp/q2.moec" --force --hf "$tmp/q2.moec"
expect1 "calib -o a hard link to the model" -- "$bin/moec-calib" "$tmp/q2.moec" --text "$tmp/small.txt" \
  -o "$tmp/q2-hardlink.moec"
[ "$(digest "$tmp/q2.moec")" = "$qbefore" ] && ok || fail "the input container changed"

# ---- out of space part-way -------------------------------------------------

if ! mount -t tmpfs -o size=6m tmpfs "$fs" 2>/dev/null; then
  echo "SKIP: out-of-space tests: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)"
else
  mounted=1
  # fills the tmpfs so that $1 bytes stay free
  leave_free() {
    rm -f "$fs/filler"
    local avail
    avail=$(($(stat -f -c '%a * %S' "$fs")))
    [ "$avail" -gt "$1" ] && head -c $((avail - $1)) /dev/zero >"$fs/filler"
  }
  size_of() { du -sb "$1" | cut -f1; }
  for t in $tools; do
    need=$(size_of "$tmp/ref/$t")
    # fresh: nothing there before, nothing after
    rm -rf "${fs:?}/out"*
    leave_free $((need / 3))
    expect1 "$t out of space, fresh output" -- run "$t" "$fs/out"
    grep -qi "no space" "$tmp/err" || fail "$t out of space: the message does not say so: $(cat "$tmp/err")"
    [ ! -e "$fs/out" ] && [ -z "$(leftovers "$fs/out")" ] && ok ||
      fail "$t out of space left $(ls -A "$fs" | tr '\n' ' ')"
    # an existing output stays as it was
    rm -f "$fs/filler"
    cp -r "$tmp/old/$t" "$fs/out"
    old=$(digest "$fs/out")
    leave_free $((need / 3))
    expect1 "$t out of space, existing output" -- run "$t" "$fs/out"
    [ "$(digest "$fs/out")" = "$old" ] && [ -z "$(leftovers "$fs/out")" ] && ok ||
      fail "$t out of space changed the existing output or left $(ls -A "$fs" | tr '\n' ' ')"
  done
  rm -rf "${fs:?}"/*
fi

# ---- SIGKILL and SIGINT ----------------------------------------------------
# waits until a temporary of output $1 exists (the tool is writing), for at
# most ~20 s; returns 1 when process $2 ended first
wait_for_temp() {
  local i
  for ((i = 0; i < 4000; i++)); do
    [ -n "$(leftovers "$1")" ] && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.005
  done
  return 1
}

# the output $2 of tool $1 is absent, the old one or the complete new one
whole() {
  local d
  d=$(digest "$2")
  [ "$d" = absent ] || [ "$d" = "$(digest "$tmp/old/$1")" ] || [ "$d" = "$(digest "$tmp/ref/$1")" ]
}

# starts tool $1 writing $2 over a copy of its old output (pid in $pid);
# with "int", SIGINT keeps its default action, as at a terminal
start() {
  rm -rf "$2" "$2".tmp*
  cp -r "$tmp/old/$1" "$2"
  "cmd_$1" "$2"
  if [ "${3:-}" = int ]; then
    perl -e "$restore_sigint" "${CMD[@]}" >/dev/null 2>"$tmp/err" &
  else
    "${CMD[@]}" >/dev/null 2>&1 &
  fi
  pid=$!
}

mkdir -p "$tmp/k"
kills=0
ints=0
for t in $tools; do
  out=$tmp/k/$t
  # SIGKILL at fixed moments, and while a temporary exists (the output is
  # being written; a few tries, as the window may be short)
  for delay in 0.05 0.3 0.8; do
    start "$t" "$out"
    sleep "$delay"
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    whole "$t" "$out" && ok || fail "$t killed after ${delay}s: the output is neither old nor new"
  done
  for try in 1 2 3 4; do
    start "$t" "$out"
    landed=0
    wait_for_temp "$out" "$pid" && landed=1
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    whole "$t" "$out" && ok || fail "$t killed while writing: the output is neither old nor new"
    [ "$landed" = 1 ] && { kills=$((kills + 1)); break; }
  done
  # Ctrl-C while writing: the tool dies of SIGINT, no temporary stays, the
  # output is the old one (or the new one, when the signal came after it
  # was in place)
  for try in 1 2 3 4; do
    start "$t" "$out" int
    if ! wait_for_temp "$out" "$pid"; then
      wait "$pid"
      continue
    fi
    kill -INT "$pid"
    wait "$pid"
    st=$?
    # the tool may have finished between the sight of its temporary and the
    # signal: then it exits 0 with the complete new output in place
    if [ "$st" -eq 0 ] && [ "$(digest "$out")" = "$(digest "$tmp/ref/$t")" ] && [ -z "$(leftovers "$out")" ]; then
      ok
      continue
    fi
    ints=$((ints + 1))
    if [ "$st" -ne 130 ]; then
      fail "$t SIGINT: exit $st, expected death by SIGINT (130)"; cat "$tmp/err"
    elif [ -n "$(leftovers "$out")" ]; then
      fail "$t SIGINT left $(leftovers "$out")"
    elif ! whole "$t" "$out"; then
      fail "$t SIGINT: the output is neither old nor new"
    else
      ok
    fi
    break
  done
done
# the windows are short on small models: demand that some landed, not all
[ "$kills" -gt 0 ] || fail "no SIGKILL landed while an output was being written"
[ "$ints" -gt 0 ] || fail "no SIGINT landed while an output was being written"

echo "cli_faults: $pass passed, $fails failed (while writing: $kills of 5 tools killed, $ints interrupted)"
[ "$fails" -eq 0 ]
