"""Starts the sandbox cluster and runs this directory's tests against deploy/api with the pytest plugin.

    sudo .venv/bin/python examples/pytest_suite/run.py [-n 2]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.sandbox.cluster import Cluster  # noqa: E402


def main() -> int:
    if os.geteuid() != 0:
        print("the sandbox builds network namespaces: run it as root", file=sys.stderr)
        return 1
    here = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = os.path.join(tmp, "kubeconfig")
        with Cluster.start(ROOT / "examples" / "k8s" / "sandbox.yaml", kubeconfig):
            env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=kubeconfig)
            cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--mirror-target", "deploy/api",
                   "--mirror-namespace", "staging", *sys.argv[1:], str(here)]
            return subprocess.run(cmd, env=env, cwd=str(here)).returncode


if __name__ == "__main__":
    sys.exit(main())
