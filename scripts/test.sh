#!/usr/bin/env bash
# Install prerank with its test and serve extras into .venv and run the test suite, from a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="[test,serve]" bash scripts/setup_env.sh
# Two pytest-xdist workers (PRERANK_TEST_WORKERS): most tests run one TensorFlow process on one core at a time, so
# two keep both cores of the reference machine busy; a module's tests stay in one worker (tests/conftest.py).
exec .venv/bin/python -m pytest -q -n "${PRERANK_TEST_WORKERS:-2}" --dist loadfile "$@"
