#!/usr/bin/env bash
# Install the test needs and run the test suite (extra arguments go to pytest).
#   scripts/test.sh            the whole suite, on TFLAB_TEST_WORKERS pytest-xdist workers (default 2; 0 = no xdist)
#   scripts/test.sh --quick    the inner loop: no TensorFlow pipelines, no browser, no EC2 in a box
# The EC2-in-a-box tests share one box, so they all run on one worker (--dist loadgroup, tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
for a in "$@"; do
  if [ "$a" = "--quick" ]; then args+=(-m "not slow and not browser and not cloudbox"); else args+=("$a"); fi
done
bash scripts/install.sh --test
workers=${TFLAB_TEST_WORKERS:-2}
if [ "$workers" != 0 ]; then
  args=(-n "$workers" --dist loadgroup "${args[@]}")
fi
exec .venv/bin/python -m pytest "${args[@]}"
