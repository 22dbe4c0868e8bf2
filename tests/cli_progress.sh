#!/usr/bin/env bash
# Progress on long work: one line on stderr, redrawn in place with a rate and
# an ETA, only when stderr is a terminal; nothing when stderr is a file or a
# pipe, and nothing at a terminal under --quiet or --json. The terminal is a
# pty from script(1) (util-linux), which these tests need.
#   tests/cli_progress.sh BIN_DIR SOURCE_DIR
set -u
bin=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
pass=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

if ! command -v script >/dev/null; then
  echo "cli_progress: script(1) not found (util-linux / bsdutils)"; exit 1
fi

small=$src/tests/fixtures/qwen2moe-random
tiny=$src/models/mixtral-tiny
head -c 3000 "$src/data/corpus/c.val.txt" >"$tmp/c.txt"
head -c 16000 "$src/data/corpus/drama.val.txt" >"$tmp/d.txt"
"$bin/moec-quant" "$small" --bits 4 --verify-tokens 0 --quiet -o "$tmp/q.moec" || { echo "FAIL: setup"; exit 1; }

# The long-work commands, each with the stage its progress line names.
# NAME STAGE -- COMMAND...
cases=()
add() { cases+=("$*"); }
add calib calibrating -- "$bin/moec-calib" "$small" --text "$tmp/c.txt" --ctx 32 -o "$tmp/OUT.stats" --force
add quant quantizing -- "$bin/moec-quant" "$small" --method gptq --bits 4 --text "$tmp/c.txt" --ctx 32 \
  --tokens 512 --verify-tokens 0 -o "$tmp/OUT.moec" --force
add merge merging -- "$bin/moec-merge" "$small" --method average --keep 2 --text "$tmp/c.txt" --ctx 32 \
  -o "$tmp/OUT-m" --force
add prune calibrating -- "$bin/moec-prune" "$small" --method freq --keep 2 --text "$tmp/c.txt" --ctx 32 \
  -o "$tmp/OUT-p" --force
add eval evaluating -- "$bin/moec-eval" "$small" --text "$tmp/c.txt" --ctx 32
add export dequantizing -- "$bin/moec-export" "$tmp/q.moec" --hf "$tmp/OUT-e" --force

# quote a command for script -c
quoted() { local q= a; for a in "$@"; do q+=" $(printf '%q' "$a")"; done; printf '%s' "$q"; }

for c in "${cases[@]}"; do
  read -r -a w <<<"$c"
  name=${w[0]} stage=${w[1]}
  cmd=("${w[@]:3}")
  # stderr a file: nothing on it
  "${cmd[@]}" >/dev/null 2>"$tmp/err"
  rc=$?
  if [ $rc -ne 0 ]; then fail "$name: exit $rc"; cat "$tmp/err"; continue; fi
  if [ -s "$tmp/err" ]; then fail "$name: stderr not a terminal, yet it printed:"; cat -v "$tmp/err"; else pass=$((pass + 1)); fi
  # stderr a pipe: nothing either
  "${cmd[@]}" 2>&1 >/dev/null | cat >"$tmp/pipe"
  if [ -s "$tmp/pipe" ]; then fail "$name: stderr a pipe, yet it printed:"; cat -v "$tmp/pipe"; else pass=$((pass + 1)); fi
  # a terminal: the stage's line, drawn with \r and erased at the end
  script -qec "$(quoted "${cmd[@]}") >/dev/null" /dev/null >"$tmp/tty" 2>&1
  if ! grep -q $'\r\033\[K'"$stage" "$tmp/tty"; then
    fail "$name: no '$stage' progress line at a terminal:"; cat -v "$tmp/tty"
  elif [ "$(tail -c 4 "$tmp/tty")" != $'\r\033[K' ]; then
    fail "$name: the progress line is not erased at the end:"; cat -v "$tmp/tty"
  else
    pass=$((pass + 1))
  fi
  # a terminal, --quiet or --json: nothing
  for flag in --quiet --json; do
    script -qec "$(quoted "${cmd[@]}" "$flag") >/dev/null" /dev/null >"$tmp/tty" 2>&1
    if [ -s "$tmp/tty" ]; then fail "$name $flag: printed at a terminal:"; cat -v "$tmp/tty"; else pass=$((pass + 1)); fi
  done
done

# a longer evaluation at a terminal shows the rate and the time left
script -qec "$(quoted "$bin/moec-eval" "$tiny" --text "$tmp/d.txt" --ctx 64) >/dev/null" /dev/null >"$tmp/tty" 2>&1
if grep -q 'evaluating d.txt: [0-9]*/[0-9]* windows · [0-9]*% · [0-9.]* windows/s · ETA [0-9]' "$tmp/tty"; then
  pass=$((pass + 1))
else
  fail "eval: no rate and ETA at a terminal:"; tr '\r' '\n' <"$tmp/tty" | cat -v | tail -5
fi
# an error at a terminal erases the progress line first: the error is one clean line
script -qec "$(quoted "$bin/moec-eval" "$small" --text "$tmp/c.txt" "$tmp/none.txt" --ctx 32) >/dev/null" \
  /dev/null >"$tmp/tty" 2>&1
if tr '\r' '\n' <"$tmp/tty" | grep -q $'^\033\[Kmoec-eval: .*none.txt'; then
  pass=$((pass + 1))
else
  fail "eval error at a terminal:"; cat -v "$tmp/tty"
fi

echo "cli_progress: $pass passed, $fails failed"
[ "$fails" -eq 0 ]
