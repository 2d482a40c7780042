#!/usr/bin/env bash
# kiln's full check, as CI runs it (as root on Debian 12): machine setup and
# fixtures, formatting, lints, tests. Run from anywhere.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

section() { printf '\n==== %s ====\n' "$*"; }

section "setup: Debian packages and fixture images"
./scripts/setup.sh --debian

section "cargo fmt --check"
cargo fmt --all -- --check

section "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

section "cargo test"
cargo test --workspace

section "Python SDK suite (unmodified dagger-io)"
./tests/sdk/python/run.sh

section "TypeScript SDK suite (unmodified @dagger.io/dagger)"
./tests/sdk/typescript/run.sh

section "Rust SDK suite (unmodified dagger-sdk crate)"
./tests/sdk/rust/run.sh

section "all checks passed"
