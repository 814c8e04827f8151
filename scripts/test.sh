#!/usr/bin/env bash
# The whole test suite: lint, then unit and end-to-end tests (as root: they create namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -p no:cacheprovider "$@"
