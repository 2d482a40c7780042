#!/usr/bin/env bash
# Dagger's own Python SDK integration tests (dagger-io v0.21.8's
# tests/client/test_integration.py, from its sdist on PyPI) against kiln,
# with the SDK starting `kiln session` itself. Run by ../run.sh after
# kiln's own suite; needs scripts/sdk-env.sh sourced. The tests that need
# what this machine cannot give (Docker Hub, GitHub) are skipped with their
# reasons (stand_ins.py).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSION=0.21.8
: "${KILN_REPO:?source scripts/sdk-env.sh first}"
DEST="${KILN_CACHE_DIR:-$KILN_REPO/.cache}/sdk/upstream/dagger_io-$VERSION"

if [[ ! -f "$DEST/tests/client/test_integration.py" ]]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --no-binary dagger-io "dagger-io==$VERSION" -d "$tmp"
  tar -xzf "$tmp/dagger_io-$VERSION.tar.gz" -C "$tmp"
  mkdir -p "$(dirname "$DEST")"
  rm -rf "$DEST"
  mv "$tmp/dagger_io-$VERSION" "$DEST"
fi
# Installed as their conftest.py there (not one here: kiln's own suite would load it).
cp "$HERE/stand_ins.py" "$DEST/tests/client/conftest.py"

cd "$DEST"
export KILN_STATE_DIR="$KILN_SDK_TMP/state-upstream"
mkdir -p "$KILN_STATE_DIR"
_EXPERIMENTAL_DAGGER_CLI_BIN="$KILN_BIN" python3 -m pytest -q -p no:cacheprovider \
  -rs tests/client/test_integration.py "$@"
