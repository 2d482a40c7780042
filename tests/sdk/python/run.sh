#!/usr/bin/env bash
# kiln's Python SDK suite: the official dagger-io SDK (pinned in
# requirements.txt) against kiln, in both ways a pipeline meets an engine:
#   1. `kiln run -- pytest ...`       (DAGGER_SESSION_PORT/TOKEN from kiln)
#   2. `_EXPERIMENTAL_DAGGER_CLI_BIN=kiln pytest ...` (the SDK runs `kiln session`)
# then Dagger's own Python integration tests (upstream/run.sh; extra
# arguments are not passed to those).
# Extra arguments go to pytest (e.g. -k exec, -x). Exits non-zero on any failure.
# Needs scripts/setup.sh --debian to have run once (fixtures).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"

# shellcheck source=../../../scripts/sdk-env.sh
source "$REPO/scripts/sdk-env.sh"

cd "$HERE"
status=0
elapsed() { echo "$(( ($(date +%s%N) - $1) / 1000000 ))ms"; }

printf '\n==== Python SDK suite, mode 1: kiln run -- pytest ====\n'
t0=$(date +%s%N)
# The outer kiln keeps quiet (its progress would interleave with pytest's);
# tests that start their own kiln processes ask for plain progress.
if KILN_PROGRESS=quiet "$KILN_BIN" run -- python3 -m pytest "$@"; then
  echo "mode 1 (kiln run): passed in $(elapsed "$t0")"
else
  echo "mode 1 (kiln run): FAILED after $(elapsed "$t0")"
  status=1
fi

printf '\n==== Python SDK suite, mode 2: _EXPERIMENTAL_DAGGER_CLI_BIN=kiln ====\n'
t0=$(date +%s%N)
# A state dir of its own, so mode 2 does not start with mode 1's cache.
export KILN_STATE_DIR="$KILN_SDK_TMP/state-mode2"
mkdir -p "$KILN_STATE_DIR"
# The examples start their own `kiln run` processes whatever the mode: once is enough.
rc=0
_EXPERIMENTAL_DAGGER_CLI_BIN="$KILN_BIN" python3 -m pytest -m "not examples" "$@" || rc=$?
if [[ $rc == 0 ]]; then
  echo "mode 2 (SDK-provisioned session): passed in $(elapsed "$t0")"
elif [[ $rc == 5 ]]; then
  echo "mode 2 (SDK-provisioned session): no tests selected (examples run in mode 1 only)"
else
  echo "mode 2 (SDK-provisioned session): FAILED after $(elapsed "$t0")"
  status=1
fi

printf '\n==== Dagger v0.21.8 SDK integration tests (dagger-io sdist) ====\n'
t0=$(date +%s%N)
if "$HERE/upstream/run.sh"; then
  echo "Dagger's own tests: passed in $(elapsed "$t0")"
else
  echo "Dagger's own tests: FAILED after $(elapsed "$t0")"
  status=1
fi

exit "$status"
