#!/bin/sh
# The sample "application" the example pipeline builds and tests.
set -eu
name="${1:-world}"
echo "hello, ${name}"
