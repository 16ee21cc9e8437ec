#!/usr/bin/env bash
# Install prerank with its test and serve extras into .venv and run the test suite, from a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="[test,serve]" bash scripts/setup_env.sh
exec .venv/bin/python -m pytest -q "$@"
