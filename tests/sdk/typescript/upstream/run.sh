#!/usr/bin/env bash
# Dagger's own TypeScript SDK tests (sdk/typescript/src/api/test/api.spec.ts
# at v0.21.8) against kiln: the ones that use dockerBuild, export and
# platforms ("Recursively solve sub queries", "Compute nested array of
# arguments"), or all of the file with --all.
#
#   tests/sdk/typescript/upstream/run.sh DAGGER_GIT_DIR [--all]
#
# Not part of CI: unlike the Python SDK's sdist, the npm package ships no
# tests, so this needs a clone of github.com/dagger/dagger (DAGGER_GIT_DIR,
# a work tree or a bare repository holding the v0.21.8 tag). The spec's
# `alpine:3.16.2` and `alpine` are served by kiln's two-platform busybox
# fixture (what the selected tests run in them, busybox has).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../../.." && pwd)"
SRC="${1:?usage: run.sh DAGGER_GIT_DIR [--all]}"
VERSION=v0.21.8
GREP=(-g "Recursively solve sub queries|Compute nested array of arguments")
[[ "${2:-}" == --all ]] && GREP=()

# shellcheck source=../../../../scripts/sdk-env.sh
source "$REPO/scripts/sdk-env.sh"
trap kiln_sdk_cleanup EXIT

work="$KILN_SDK_TMP/dagger-typescript"
mkdir -p "$work"
git -C "$SRC" archive "$VERSION" sdk/typescript | tar -x -C "$work"
cd "$work/sdk/typescript"
# Its devDependencies pin peers loosely (@dagger.io/mocha wants typescript 5).
npm install --no-audit --no-fund --ignore-scripts --legacy-peer-deps >/dev/null

for tag in 3.16.2 latest; do
  _kiln_sdk_copy "$KILN_FIXTURES/multiplatform" "library/alpine:$tag" --all
done
export KILN_STATE_DIR="$KILN_SDK_TMP/state-typescript-upstream"
mkdir -p "$KILN_STATE_DIR"
_EXPERIMENTAL_DAGGER_CLI_BIN="$KILN_BIN" npx mocha src/api/test/api.spec.ts "${GREP[@]}"
