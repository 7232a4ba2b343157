#!/usr/bin/env bash
# Install the test needs and run the test suite (extra arguments go to pytest).
#   scripts/test.sh            the whole suite, on TFLAB_TEST_WORKERS pytest-xdist workers (0 = no xdist; default:
#                              2 per core, at most 4: many tests wait on processes, so 2 per core keep the cores
#                              busy; measured with bench/suite.py, see the README's Development section)
#   scripts/test.sh --quick    the inner loop: no TensorFlow pipelines, no browser, no EC2 in a box
# The EC2-in-a-box tests share one box, so they all run on one worker (--dist loadgroup, tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
for a in "$@"; do
  if [ "$a" = "--quick" ]; then args+=(-m "not slow and not browser and not cloudbox"); else args+=("$a"); fi
done
bash scripts/install.sh --test
cores=$(nproc 2>/dev/null || echo 1)
workers=${TFLAB_TEST_WORKERS:-$(( 2 * cores < 4 ? 2 * cores : 4 ))}
if [ "$workers" != 0 ]; then
  args=(-n "$workers" --dist loadgroup "${args[@]}")
fi
exec .venv/bin/python -m pytest "${args[@]}"
