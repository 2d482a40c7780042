#!/usr/bin/env bash
# kiln's Rust SDK suite: the official dagger-sdk crate (pinned =0.21.11 in
# Cargo.toml, locked in Cargo.lock) against kiln, both ways a pipeline meets
# an engine:
#   1. `kiln run -- <test binary>`     (DAGGER_SESSION_PORT/TOKEN from kiln;
#      the tests run in parallel threads on one session)
#   2. `_EXPERIMENTAL_DAGGER_CLI_BIN=kiln <test binary> --test-threads=1`
#      (every test's connect() runs its own `kiln session`)
# Extra arguments go to the test binary (e.g. hello_world, --nocapture).
# Builds into ${CARGO_TARGET_DIR:-${KILN_CACHE_DIR:-<repo>/.cache}/sdk/rust-target};
# set CARGO_BUILD_JOBS to limit the build's parallelism.
# Exits non-zero on any failure. Needs scripts/setup.sh --debian once (fixtures).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${KILN_CACHE_DIR:-$REPO/.cache}/sdk/rust-target}"

elapsed() { echo "$(( ($(date +%s%N) - $1) / 1000000 ))ms"; }

printf '\n==== Rust SDK suite: build (cargo test --no-run) ====\n'
t0=$(date +%s%N)
# The test binary's path, from cargo's JSON messages (its name carries a hash).
test_bin="$(
  cd "$HERE" && cargo test --locked --no-run --message-format=json-render-diagnostics |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "sdk" and m.get("executable"):
        print(m["executable"])
'
)"
if [[ -z "$test_bin" || ! -x "$test_bin" ]]; then
  echo "build: no test binary found" >&2
  exit 1
fi
echo "build: $test_bin in $(elapsed "$t0")"

# shellcheck source=../../../scripts/sdk-env.sh
source "$REPO/scripts/sdk-env.sh"

# Seatbelt: nothing here may leave the machine. dagger-sdk falls back to
# downloading a Dagger CLI from dl.dagger.io when `kiln session` fails, and a
# registry mirror miss falls back to docker.io: both honour these variables
# and so hit a closed loopback port instead. Loopback calls go direct.
export HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 ALL_PROXY=http://127.0.0.1:9
export https_proxy="$HTTPS_PROXY" http_proxy="$HTTP_PROXY" all_proxy="$ALL_PROXY"
export NO_PROXY=127.0.0.1,localhost,::1 no_proxy=127.0.0.1,localhost,::1

cd "$HERE"
status=0

printf '\n==== Rust SDK suite, mode 1: kiln run -- <test binary> ====\n'
t0=$(date +%s%N)
if KILN_PROGRESS=quiet "$KILN_BIN" run -- "$test_bin" "$@"; then
  echo "mode 1 (kiln run): passed in $(elapsed "$t0")"
else
  echo "mode 1 (kiln run): FAILED after $(elapsed "$t0")"
  status=1
fi

printf '\n==== Rust SDK suite, mode 2: _EXPERIMENTAL_DAGGER_CLI_BIN=kiln ====\n'
t0=$(date +%s%N)
# A state dir of its own, so mode 2 does not start with mode 1's cache. One
# test at a time: two `kiln session`s cannot share a state directory.
mkdir -p "$KILN_SDK_TMP/state-rust-mode2"
if KILN_STATE_DIR="$KILN_SDK_TMP/state-rust-mode2" KILN_PROGRESS=quiet \
  _EXPERIMENTAL_DAGGER_CLI_BIN="$KILN_BIN" "$test_bin" --test-threads=1 "$@"; then
  echo "mode 2 (SDK-provisioned session): passed in $(elapsed "$t0")"
else
  echo "mode 2 (SDK-provisioned session): FAILED after $(elapsed "$t0")"
  status=1
fi

exit "$status"
