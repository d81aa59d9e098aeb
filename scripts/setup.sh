#!/usr/bin/env bash
# Create .venv (if missing) and install hf_lwmm with the tested, pinned versions (CPU torch).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
