#!/usr/bin/env bash
# Creates .venv with mirror-py (editable) and what the tests and examples use.
# The interpreter is $PYTHON, else python3; it must be Python 3.10 or newer with venv. On Debian, what is missing
# for it is installed (python3, python3.X-venv); an interpreter that is not Debian's (pyenv, uv) is used as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null; then
  if [ -z "${PYTHON:-}" ]; then
    bash scripts/system-packages.sh python3 python3-venv
  fi
  command -v "$PY" >/dev/null || { echo "setup: $PY not found; mirror-py needs Python 3.10 or newer" >&2; exit 1; }
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "setup: $PY is Python $("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])'); mirror-py needs 3.10" \
       "or newer: run with PYTHON=/path/to/python3.X (README: Python versions)" >&2
  exit 1
fi
debian_python() {
  command -v dpkg-query >/dev/null &&
    dpkg -S "$("$PY" -c 'import os, sys; print(os.path.realpath(sys.executable))')" >/dev/null 2>&1
}
pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
  # Debian splits venv's pip bootstrap into python3.X-venv.
  if debian_python; then
    bash scripts/system-packages.sh "python$pyver-venv"
  else
    echo "setup: $PY cannot create virtual environments (no ensurepip)" >&2
    exit 1
  fi
fi
# The test extras build mysqlclient from its sdist (no Linux wheel): a compiler, libmariadb's headers and the
# interpreter's own headers (Debian ships them apart, in python3.X-dev).
bash scripts/system-packages.sh build
if ! "$PY" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_path("include") + "/Python.h"))'
then
  if debian_python; then
    bash scripts/system-packages.sh "python$pyver-dev"
  else
    echo "setup: $PY has no C headers (Python.h), which building mysqlclient needs" >&2
    exit 1
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
log=.venv/setup.log
if ! { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[test]'; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "setup: installing Python packages failed (log above)" >&2
  exit 1
fi
