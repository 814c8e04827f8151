"""Creates a local sandbox pod and runs examples/quickstart/app.py twice: directly, then through mirror-py.

The pod is a network + mount namespace with its own /etc/hosts, hostname, environment and servers (an HTTP
API on its loopback, Redis), the same parts a Kubernetes pod gives its containers. Needs root.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.sandbox.netpod import Network, PodSpec  # noqa: E402


def main() -> int:
    if os.geteuid() != 0:
        print("the quickstart builds network namespaces: run it as root", file=sys.stderr)
        return 1
    app = [sys.executable, str(ROOT / "examples" / "quickstart" / "app.py")]
    with Network.create() as net:
        pod = net.add_pod(PodSpec(
            name="api",
            env={"DATABASE_URL": "postgres://db.staging.svc.cluster.local/app"},
            hosts={"api.pod.internal": "127.0.0.1"},
            hostname="api-7d9f",
            servers=True,
        ))
        print(f"sandbox pod 'api' is up: ip {pod.ip}, main process pid {pod.pid}\n")
        print("$ python examples/quickstart/app.py")
        subprocess.run(app, check=False)
        print(f"\n$ mirror-py exec --target pid/{pod.pid} -- python examples/quickstart/app.py")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        code = subprocess.run([sys.executable, "-m", "mirror_py", "exec", "--target", f"pid/{pod.pid}", "--",
                               *app], env=env).returncode
    return code


if __name__ == "__main__":
    sys.exit(main())
