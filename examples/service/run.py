"""Runs the example service against the sandbox cluster and asks it one question.

    sudo .venv/bin/python examples/service/run.py

Starts the sandbox from examples/k8s/sandbox.yaml plus postgres.yaml, runs app.py through
`mirror-py exec --target deploy/api -n staging`, requests its / and prints the answer.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.sandbox import postgres  # noqa: E402
from tests.sandbox.cluster import Cluster  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    if os.geteuid() != 0:
        print("the sandbox builds network namespaces: run it as root", file=sys.stderr)
        return 1
    try:
        postgres.server_bin()  # the sandbox runs the machine's own server: say so now if there is none
    except postgres.NoPostgres as exc:
        print(f"the service example needs a PostgreSQL server: {exc}", file=sys.stderr)
        return 1
    here = Path(__file__).resolve().parent
    manifest = "\n---\n".join(p.read_text() for p in (ROOT / "examples" / "k8s" / "sandbox.yaml",
                                                         here / "postgres.yaml"))
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = os.path.join(tmp, "kubeconfig")
        with Cluster.start(manifest, kubeconfig):
            env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=kubeconfig, PORT=str(port))
            # Local listeners stay local: the service itself must not be sent to the pod.
            cmd = [sys.executable, "-m", "mirror_py", "exec", "--target", "deploy/api", "-n", "staging",
                   "--", sys.executable, str(here / "app.py")]
            print("$ " + " ".join(["mirror-py", *cmd[3:5], "deploy/api", "-n", "staging", "--", "python", "app.py"]))
            server = subprocess.Popen(cmd, env=env)
            try:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        answer = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read())
                        break
                    except OSError:
                        if time.monotonic() > deadline or server.poll() is not None:
                            print("the service did not come up", file=sys.stderr)
                            return 1
                        time.sleep(0.3)
                print(json.dumps(answer, indent=2))
            finally:
                server.terminate()
                server.wait(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
