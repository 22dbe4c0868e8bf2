# Sourced by the tests/cli_*.sh scripts, after they set tmp (a scratch
# directory): the counters and the checks every tool test shares.
#   expect CODE DESCRIPTION -- COMMAND...
#     runs COMMAND with stdout in $tmp/out and stderr in $tmp/err; passes when
#     it exits CODE, a failure (1) says so in exactly one line and a usage
#     error (any other non-zero code) in at least one
#   expect_clean CODE DESCRIPTION DIR -- COMMAND...
#     expect, and afterwards DIR holds what it held before
fails=0
pass=0

expect() {
  local want=$1 what=$2
  shift 3
  "$@" >"$tmp/out" 2>"$tmp/err"
  local got=$?
  local lines
  lines=$(wc -l <"$tmp/err")
  if [ "$got" -ne "$want" ]; then
    echo "FAIL: $what: exit $got, expected $want"; cat "$tmp/err"; fails=$((fails + 1)); return
  fi
  if [ "$want" -ne 0 ] && [ "$lines" -lt 1 ]; then
    echo "FAIL: $what: no message on stderr"; fails=$((fails + 1)); return
  fi
  if [ "$want" -eq 1 ] && [ "$lines" -ne 1 ]; then
    echo "FAIL: $what: expected one line on stderr, got $lines"; cat "$tmp/err"; fails=$((fails + 1)); return
  fi
  pass=$((pass + 1))
}

expect_clean() {
  local want=$1 what=$2 dir=$3
  local before after
  before=$(ls -A "$dir")
  expect "$want" "$what" -- "${@:5}"
  after=$(ls -A "$dir")
  if [ "$before" != "$after" ]; then
    echo "FAIL: $what: left behind in $dir:"; comm -13 <(echo "$before") <(echo "$after"); fails=$((fails + 1))
  fi
}
