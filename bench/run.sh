#!/usr/bin/env bash
# Runs kiln's benchmarks side by side with their floor and records them:
#   bench/run.sh            print the table
#   bench/run.sh --record   also append it to docs/benchmarks.md
# Needs root (containers), the fixtures (scripts/setup.sh), Debian's docker.io
# for the BuildKit comparison (its dockerd is started and stopped by the
# script, never as a service), and builds kiln in release mode. Extra
# arguments go to bench/run.py (--only, --runs; see its --help). The host
# tree benchmark generates 1 GB (and a git repository of it) once under the
# cache dir.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
./scripts/setup.sh --fixtures-only >/dev/null
cargo build --release -p kiln
# shellcheck source=../scripts/sdk-env.sh
source scripts/sdk-env.sh
KILN_BIN="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/kiln"
export KILN_BIN
export KILN_STATE_DIR="$KILN_SDK_TMP/bench-state"
python3 bench/run.py "$@"
