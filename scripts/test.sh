#!/usr/bin/env bash
# The whole test suite: lint, then unit and end-to-end tests (as root: they create namespaces), then the API-facing
# tests again on the oldest client libraries allowed (scripts/test-oldest.sh). Installs the
# Debian packages the tests need where they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-packages.sh test
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -p no:cacheprovider "$@"
# the oldest kubernetes and websockets setup.cfg allows, on the tests that reach their APIs (about a minute)
bash scripts/test-oldest.sh
