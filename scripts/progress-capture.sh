#!/usr/bin/env bash
# Records what `kiln --progress tty` looks like on a real terminal, for the
# docs: runs a small pipeline (two branches in parallel, one cached step,
# one failing step) in a tmux pane 100x32, captures the screen while both
# branches run, then once the run ended, into docs/progress-tty.txt.
#
#   scripts/progress-capture.sh          (as root; needs tmux and the fixtures)
#
# The assertions on this display live in crates/kiln/tests/root_tty.rs; this
# script only makes the picture.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$REPO/docs/progress-tty.txt"
export KILN_SDK_NO_TRAP=1
# shellcheck source=sdk-env.sh
source "$REPO/scripts/sdk-env.sh"
work="$(mktemp -d "${TMPDIR:-/tmp}/kiln-capture.XXXXXX")"
sock="$work/tmux.sock"
cleanup() {
  tmux -S "$sock" kill-server 2>/dev/null || true
  kiln_sdk_cleanup
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf 'withExec(args: ["sh", "-c", %s])' "$(printf '%s' "$1" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')"; }
query() { # query FILE STEP...
  local file="$1" body='from(address: "busybox")' s
  shift
  for s in "$@"; do body="$body { $(step "$s")"; done
  body="$body { stdout }"
  for s in "$@"; do body="$body }"; done
  printf '{ container { %s } }\n' "$body" >"$file"
}
deps='echo installing dependencies; sleep 1; echo done'
query "$work/build.graphql" "$deps" 'for i in $(seq 1 40); do echo "compiling module $i of 40"; sleep 0.1; done'
query "$work/test.graphql" "$deps" 'for i in $(seq 1 30); do echo "test case $i ok"; sleep 0.12; done; echo "FAIL: test_upload (expected 200, got 500)" >&2; exit 1'
query "$work/warm.graphql" "$deps"
client="$REPO/crates/kiln/tests/fixtures/client.py"

# Warm the cache with the shared first step.
"$KILN_BIN" --progress quiet run -- python3 "$client" "$work/warm.graphql" >/dev/null

tmux -S "$sock" -u new-session -d -s kiln -x 100 -y 32 \
  "env -u NO_COLOR KILN_CONFIG='$KILN_CONFIG' KILN_STATE_DIR='$KILN_STATE_DIR' '$KILN_BIN' --progress tty run -- python3 '$client' '$work/build.graphql' '$work/test.graphql'; tmux -S '$sock' wait-for -S kiln-done; cat"
running=""
for _ in $(seq 1 300); do
  screen="$(tmux -S "$sock" capture-pane -p -t kiln)"
  if [[ "$(grep -o '╭─' <<<"$screen" | wc -l)" -ge 2 ]] && grep -q 'compiling module 1[0-9] of' <<<"$screen"; then
    running="$screen"
    break
  fi
  sleep 0.1
done
tmux -S "$sock" wait-for kiln-done
final="$(tmux -S "$sock" capture-pane -p -J -S - -t kiln)"
{
  echo "# kiln --progress tty, captured from a tmux pane (100x32) by scripts/progress-capture.sh"
  echo
  echo "## While both branches run"
  echo
  sed -e 's/[[:space:]]*$//' <<<"${running:-(not captured: the branches did not run side by side)}" | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}'
  echo
  echo "## When the run ended"
  echo
  sed -e 's/[[:space:]]*$//' <<<"$final" | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}'
} >"$OUT"
echo "wrote $OUT"
