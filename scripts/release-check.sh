#!/usr/bin/env bash
# The release suite against your own cluster (docs/real-cluster.md):
#   bash scripts/release-check.sh [KUBECONFIG-FILE] [pytest options...]
# It creates a namespace of its own (mirror-py-e2e-<random>), runs every scenario there and deletes it. No root
# is needed. The kubeconfig defaults to $KUBECONFIG (one file), then ~/.kube/config; its current context is used.
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-${KUBECONFIG:-$HOME/.kube/config}}"
case "$config" in
  *:*) echo "release-check: give one kubeconfig file, not a list ($config)" >&2; exit 2 ;;
esac
if [ ! -r "$config" ]; then
  echo "release-check: no readable kubeconfig at $config: give its path as the first argument" >&2
  exit 2
fi
[ -x .venv/bin/python ] || bash scripts/setup.sh
export MIRROR_PY_E2E_KUBECONFIG="$config" MIRROR_PY_E2E_BACKENDS=real
exec .venv/bin/python -m pytest -p no:cacheprovider -v -rs tests/e2e/test_release.py "${@:2}"
