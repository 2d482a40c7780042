#!/usr/bin/env bash
# The kiln demo: what to run first after cloning (Debian 12, as root).
#
#   scripts/demo.sh
#
# 1. installs the Debian packages kiln needs and builds its fixture images
#    (scripts/setup.sh --debian: busybox, and a debootstrap'ed debian:bookworm);
# 2. prepares the SDK environment (scripts/sdk-env.sh): the official Dagger
#    Python SDK in a venv, a loopback registry holding the fixture images as
#    docker.io's `busybox` and `debian:bookworm`, and the kiln binary;
# 3. runs the example pipelines in examples/python/ with `kiln run`;
# 4. runs one of them again to show that everything comes from the cache.
#
# Nothing leaves the machine: images come from the loopback registry.
# Exits non-zero if any step fails.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

bold='' dim='' off=''
if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then
  bold=$'\033[1m' dim=$'\033[2m' off=$'\033[0m'
fi
step=0
section() {
  step=$((step + 1))
  printf '\n%s==== %d. %s ====%s\n' "$bold" "$step" "$*" "$off"
}
show() {
  printf '%s$ %s%s\n' "$dim" "$*" "$off"
  "$@"
}
demo_start=$(date +%s%N)

section "Setup: Debian packages and fixture images (scripts/setup.sh --debian)"
./scripts/setup.sh --debian

section "SDK environment: dagger-io venv, loopback registry, kiln (scripts/sdk-env.sh)"
# shellcheck source=sdk-env.sh
source "$REPO/scripts/sdk-env.sh"
# So that the commands below read as a user would type them.
PATH="$(dirname "$KILN_BIN"):$PATH"
echo "kiln:      $(kiln version)"
echo "SDK:       dagger-io $(python3 -c 'from importlib.metadata import version; print(version("dagger-io"))') (unmodified, from PyPI)"
echo "images:    docker.io -> $KILN_REGISTRY (loopback registry with the fixtures)"
echo "state dir: $KILN_STATE_DIR (fresh: the first runs below start with an empty cache)"

section "hello.py: one container, one command"
show kiln run -- python3 examples/python/hello.py

section "build_and_test.py: test and build a project from the host, export the artifact"
dist="$KILN_SDK_TMP/dist"
show kiln run -- python3 examples/python/build_and_test.py "$dist"
echo "on the host:"
ls -l "$dist"

section "parallel.py: four branches at once, joined at the end"
show kiln run -- python3 examples/python/parallel.py

section "parallel.py again: nothing changed, so everything is cached"
log="$KILN_SDK_TMP/rerun.log"
show kiln run -- python3 examples/python/parallel.py 2>&1 | tee "$log"
summary="$(grep '^kiln: ' "$log" | tail -n 1)"
if [[ "$summary" != "kiln: 0 ran, "* ]]; then
  echo "demo: expected the second run to be fully cached, got: ${summary:-no summary line}" >&2
  exit 1
fi

ms=$((($(date +%s%N) - demo_start) / 1000000))
printf '\n%s==== Done in %d.%03ds ====%s\n' "$bold" $((ms / 1000)) $((ms % 1000)) "$off"
cat <<'EOF'
The second parallel.py run executed nothing ("0 ran"): every operation's
result came from kiln's content-addressed cache. Next:
  - write your own pipeline with the Dagger SDK and run it: kiln run -- python3 my_pipeline.py
  - or let the SDK start kiln itself: _EXPERIMENTAL_DAGGER_CLI_BIN=$(command -v kiln) python3 my_pipeline.py
  - the SDK test suite: tests/sdk/python/run.sh
EOF
