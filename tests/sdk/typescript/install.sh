#!/usr/bin/env bash
# Installs the pinned Dagger TypeScript SDK (package.json + package-lock.json
# here) with `npm ci` into ${KILN_CACHE_DIR:-<repo>/.cache}/sdk/node, once per
# lock file change, and links it as node_modules into this suite and into
# examples/typescript, so `node` finds @dagger.io/dagger from both.
# Prints the node_modules path. Safe to run again: a no-op when up to date.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
NODE_DIR="${KILN_CACHE_DIR:-$REPO/.cache}/sdk/node"

say() { printf '[ts-install] %s\n' "$*" >&2; }

command -v node >/dev/null || { say "node is not installed (apt-get install nodejs npm)"; exit 1; }
command -v npm >/dev/null || { say "npm is not installed (apt-get install npm)"; exit 1; }
major="$(node -p 'process.versions.node.split(".")[0]')"
if (( major < 20 )); then
  say "node $(node --version) is too old: the SDK needs node >= 20"
  exit 1
fi

want="$(cat "$HERE/package.json" "$HERE/package-lock.json" | sha256sum | cut -d' ' -f1)"
have="$(cat "$NODE_DIR/.lock.sha256" 2>/dev/null || true)"
if [[ "$want" != "$have" || ! -d "$NODE_DIR/node_modules/@dagger.io/dagger" ]]; then
  say "npm ci into $NODE_DIR"
  mkdir -p "$NODE_DIR"
  cp "$HERE/package.json" "$HERE/package-lock.json" "$NODE_DIR/"
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error) >&2
  echo "$want" >"$NODE_DIR/.lock.sha256"
fi

# Link (never replace a real directory someone made by hand).
for dir in "$HERE" "$REPO/examples/typescript"; do
  link="$dir/node_modules"
  if [[ -L "$link" || ! -e "$link" ]]; then
    ln -sfn "$NODE_DIR/node_modules" "$link"
  fi
done
echo "$NODE_DIR/node_modules"
