"""Starts the sandbox cluster from examples/k8s/sandbox.yaml and runs examples/quickstart/app.py twice:
directly, then through mirror-py against deploy/api in namespace staging.

The sandbox stands in for a real cluster (the API server, the exec websocket and the pods are real; pods are
Linux namespaces on this machine), so the command is the one you would run against staging. Needs root.
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
        print("the quickstart builds network namespaces: run it as root", file=sys.stderr)
        return 1
    app = [sys.executable, str(ROOT / "examples" / "quickstart" / "app.py")]
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = os.path.join(tmp, "kubeconfig")
        with Cluster.start(ROOT / "examples" / "k8s" / "sandbox.yaml", kubeconfig):
            print(f"sandbox cluster up (kubeconfig {kubeconfig}); namespace staging has deploy/api and deploy/redis\n")
            print("$ python examples/quickstart/app.py")
            subprocess.run(app, check=False)
            print("\n$ mirror-py exec --target deploy/api -n staging -- python examples/quickstart/app.py")
            env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=kubeconfig)
            code = subprocess.run([sys.executable, "-m", "mirror_py", "exec", "--target", "deploy/api", "-n",
                                   "staging", "--", *app], env=env).returncode
    return code


if __name__ == "__main__":
    sys.exit(main())
