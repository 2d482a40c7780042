#!/bin/sh
# Unit tests for greet.sh: exits non-zero on the first failure.
set -eu
here="$(dirname "$0")"
check() {
  got="$(sh "$here/greet.sh" "$@")"
  [ "$got" = "$expected" ] || { echo "FAIL: greet $* -> '$got', want '$expected'" >&2; exit 1; }
  echo "ok: greet $*"
}
expected="hello, world" check
expected="hello, kiln" check kiln
