#!/usr/bin/env bash
# Set up, then run the offline demo: build small source models, merge them with every method.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lwmm-hub demo --output lwmm-demo --overwrite "$@"
