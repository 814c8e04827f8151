#!/usr/bin/env bash
# The oldest versions setup.cfg allows of the libraries mirror-py talks to the API server with (kubernetes,
# websockets), in a venv of their own (.venv-oldest): the tests that reach their APIs, unit and end to end
# against the sandbox API server. A floor that claims more than the code can use fails here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-oldest/bin/python ] || "$PY" -m venv .venv-oldest
pins=$("$PY" - <<'PY'
import configparser, re
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
for line in cfg["options"]["install_requires"].splitlines():
    m = re.match(r"\s*(kubernetes|websockets)\s*>=\s*([0-9][0-9.]*)", line)
    if m:
        print(f"{m.group(1)}=={m.group(2)}")
PY
)
log=.venv-oldest/setup.log
# Only what these tests import (the whole test extras would add a minute of C extensions they never load).
# shellcheck disable=SC2086
if ! { .venv-oldest/bin/pip install -q --upgrade pip && .venv-oldest/bin/pip install -q -e . $pins \
         pytest pytest-timeout h11 pyyaml trustme 'python-socks>=2.0'; } \
    >"$log" 2>&1; then
  cat "$log" >&2
  echo "test-oldest: installing the oldest allowed versions ($pins) failed (log above)" >&2
  exit 1
fi
echo "test-oldest: $(.venv-oldest/bin/python -c 'import kubernetes, websockets; print("kubernetes", kubernetes.__version__, "websockets", websockets.__version__)')"
exec .venv-oldest/bin/python -m pytest -p no:cacheprovider -q \
  tests/unit/test_kube_pieces.py tests/unit/test_kubeconfig_merge.py tests/unit/test_proxy_choice.py \
  tests/unit/test_kube_small_faults.py tests/unit/test_warm_connection.py tests/unit/test_sandbox_cluster.py \
  tests/e2e/test_kubeconfig.py tests/e2e/test_kubeconfig_errors.py "$@"
