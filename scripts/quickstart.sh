#!/usr/bin/env bash
# Sets up mirror-py in .venv and runs the quickstart against a local sandbox cluster (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-packages.sh run
bash scripts/setup.sh
exec .venv/bin/python examples/quickstart/run.py
