#!/usr/bin/env bash
# Dagger's own Python SDK integration tests (dagger-io v0.21.8's
# tests/client/test_integration.py, from its sdist on PyPI) against kiln,
# with the SDK starting `kiln session` itself. Run by ../run.sh after
# kiln's own suite; needs scripts/sdk-env.sh sourced. What they take from
# Docker Hub and GitHub is served by stand-ins on loopback (stand_ins.py,
# and a git daemon below); the tests that need more are skipped with their
# reasons.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSION=0.21.8
: "${KILN_REPO:?source scripts/sdk-env.sh first}"
DEST="${KILN_CACHE_DIR:-$KILN_REPO/.cache}/sdk/upstream/dagger_io-$VERSION"

if [[ ! -f "$DEST/tests/client/test_integration.py" ]]; then
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --no-binary dagger-io "dagger-io==$VERSION" -d "$tmp"
  tar -xzf "$tmp/dagger_io-$VERSION.tar.gz" -C "$tmp"
  mkdir -p "$(dirname "$DEST")"
  rm -rf "$DEST"
  mv "$tmp/dagger_io-$VERSION" "$DEST"
  rm -rf "$tmp"
fi
# Installed as their conftest.py there (not one here: kiln's own suite would load it).
cp "$HERE/stand_ins.py" "$DEST/tests/client/conftest.py"

# test_git_repository reads github.com/dagger/dagger at tag v0.3.0: a
# stand-in repository with that tag and the first line of its README,
# served by `git daemon` on loopback, which kiln's [git.mirrors] puts in
# place of github.com.
standin="$KILN_SDK_TMP/git-standin"
rm -rf "$standin"
mkdir -p "$standin/work"
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
git -C "$standin/work" init -q -b main
printf '## What is Dagger?\n\n(kiln stand-in for github.com/dagger/dagger at v0.3.0)\n' >"$standin/work/README.md"
git -C "$standin/work" add README.md
git -C "$standin/work" -c user.name=kiln -c user.email=kiln@localhost commit -q -m "stand-in"
git -C "$standin/work" tag v0.3.0
git init -q --bare "$standin/dagger/dagger.git"
git -C "$standin/work" push -q "$standin/dagger/dagger.git" main --tags
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
git daemon --reuseaddr --export-all --base-path="$standin" --listen=127.0.0.1 --port="$port" "$standin" \
  >/dev/null 2>&1 &
daemon=$!
trap 'kill "$daemon" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  git ls-remote "git://127.0.0.1:$port/dagger/dagger" >/dev/null 2>&1 && break
  sleep 0.1
done
config="$KILN_SDK_TMP/kiln-upstream.toml"
cp "$KILN_CONFIG" "$config"
printf '\n[git.mirrors]\n"https://github.com/" = "git://127.0.0.1:%s/"\n' "$port" >>"$config"
export KILN_CONFIG="$config"

cd "$DEST"
export KILN_STATE_DIR="$KILN_SDK_TMP/state-upstream"
mkdir -p "$KILN_STATE_DIR"
_EXPERIMENTAL_DAGGER_CLI_BIN="$KILN_BIN" python3 -m pytest -q -p no:cacheprovider \
  -rs tests/client/test_integration.py "$@"
