#!/usr/bin/env bash
# Sets up mirror-py in .venv and runs the quickstart against a local sandbox cluster (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends iproute2 util-linux redis-server dnsmasq-base iptables >/dev/null
fi
bash scripts/setup.sh
exec .venv/bin/python examples/quickstart/run.py
