#!/usr/bin/env bash
# kiln's TypeScript SDK suite: the official @dagger.io/dagger SDK (pinned in
# package.json / package-lock.json) against kiln, both ways a pipeline meets
# an engine, then the examples in examples/typescript:
#   1. `kiln run -- node --test ...`        (DAGGER_SESSION_PORT/TOKEN from kiln)
#   2. `_EXPERIMENTAL_DAGGER_CLI_BIN=kiln node --test ...`
#      (the SDK runs `kiln session`, and ends it with SIGTERM)
#   3. `kiln run -- node examples/typescript/{hello,pipeline}.mjs`
# Extra arguments go to `node --test` (e.g. --test-name-pattern=hello).
# Exits non-zero on any failure. Needs scripts/setup.sh --debian once (fixtures).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"

t0=$(date +%s%N)
"$HERE/install.sh" >/dev/null
echo "npm ci (or up-to-date check): $(( ($(date +%s%N) - t0) / 1000000 ))ms"

# shellcheck source=../../../scripts/sdk-env.sh
source "$REPO/scripts/sdk-env.sh"

# Seatbelt: nothing here may leave the machine. Anything that is not loopback
# (an SDK downloading a Dagger CLI, a registry fallback to docker.io) goes to
# a closed loopback port instead. kiln and node-fetch's loopback calls are
# unaffected (NO_PROXY; node-fetch ignores proxies anyway).
export HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 ALL_PROXY=http://127.0.0.1:9
export https_proxy="$HTTPS_PROXY" http_proxy="$HTTP_PROXY" all_proxy="$ALL_PROXY"
export NO_PROXY=127.0.0.1,localhost,::1 no_proxy=127.0.0.1,localhost,::1

cd "$HERE"
status=0
elapsed() { echo "$(( ($(date +%s%N) - $1) / 1000000 ))ms"; }
# One test file at a time: under mode 2 every connection is its own
# `kiln session`, and two of them cannot share a state directory.
node_test=(node --test --test-concurrency=1 --test-reporter=spec "$@" test/)

printf '\n==== TypeScript SDK suite, mode 1: kiln run -- node --test ====\n'
t0=$(date +%s%N)
if KILN_PROGRESS=quiet "$KILN_BIN" run -- "${node_test[@]}"; then
  echo "mode 1 (kiln run): passed in $(elapsed "$t0")"
else
  echo "mode 1 (kiln run): FAILED after $(elapsed "$t0")"
  status=1
fi

printf '\n==== TypeScript SDK suite, mode 2: _EXPERIMENTAL_DAGGER_CLI_BIN=kiln ====\n'
t0=$(date +%s%N)
# A state dir of its own, so mode 2 does not start with mode 1's cache.
mkdir -p "$KILN_SDK_TMP/state-ts-mode2"
if KILN_STATE_DIR="$KILN_SDK_TMP/state-ts-mode2" KILN_PROGRESS=quiet \
  _EXPERIMENTAL_DAGGER_CLI_BIN="$KILN_BIN" "${node_test[@]}"; then
  echo "mode 2 (SDK-provisioned session): passed in $(elapsed "$t0")"
else
  echo "mode 2 (SDK-provisioned session): FAILED after $(elapsed "$t0")"
  status=1
fi

printf '\n==== TypeScript examples (kiln run -- node examples/typescript/...) ====\n'
t0=$(date +%s%N)
ex="$REPO/examples/typescript"
out="$KILN_SDK_TMP/ts-pipeline-out"
if hello="$("$KILN_BIN" run -- node "$ex/hello.mjs")" && [[ "$hello" == "hello from kiln" ]] \
  && "$KILN_BIN" run -- node "$ex/pipeline.mjs" "$out" \
  && [[ "$("$out/greet" examples 2>&1)" == "hello, examples" ]] \
  && (cd "$out" && sha256sum -c --quiet SHA256SUMS); then
  echo "examples: passed in $(elapsed "$t0")"
else
  echo "examples: FAILED after $(elapsed "$t0") (hello printed: ${hello:-nothing})"
  status=1
fi

exit "$status"
