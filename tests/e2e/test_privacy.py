"""The target's secrets stay out of mirror-py's own output.

mirror-py reads the target's whole environment and any file the app opens; its terminal output ends up in CI
logs, bug reports and screen shares. So with an app that reads a secret from the environment and a secret file,
sends both through a tunneled connection, and provokes errors naming them (a missing file, an unknown host),
yet prints nothing itself, neither value may appear anywhere in mirror-py's stdout or stderr, at the default
verbosity, with -v and even with -vv (debug output gets pasted into bug reports too), for a local target and
for a pod (exec and ephemeral agents, which read the environment in different ways). The user's API token stays
out too. (`mirror-py config check` masking env.override values is tested in tests/unit/test_cli_config.py.)
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.sandbox.netpod import TCP_ECHO_PORT, Network, PodSpec

from .conftest import MIRROR_PY, ROOT, sandbox_cluster

SECRET_ENV = "env-" + secrets.token_hex(12)
SECRET_FILE = "file-" + secrets.token_hex(12)
SECRET_PATH = "/etc/app/credentials.txt"

# Reads both secrets, checks them against their hashes (so the test is not vacuous, without putting the values
# in the local environment), echoes them through the target, and makes failing calls that carry them.
APP = f"""
import hashlib, os, socket, sys
token = os.environ.get("VAULT_TOKEN", "")
content = open({SECRET_PATH!r}).read().strip()
if hashlib.sha256(token.encode()).hexdigest() != os.environ["WANT_ENV_SHA"]:
    sys.exit(3)
if hashlib.sha256(content.encode()).hexdigest() != os.environ["WANT_FILE_SHA"]:
    sys.exit(4)
if os.environ.get("ECHO_HOST"):
    s = socket.create_connection((os.environ["ECHO_HOST"], int(os.environ["ECHO_PORT"])), timeout=30)
    s.sendall((token + content).encode())
    s.shutdown(socket.SHUT_WR)
    back = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        back += chunk
    if back != (token + content).encode():
        sys.exit(5)
for call in (lambda: open("/etc/app/missing-" + token), lambda: os.stat("/nonexistent/" + content),
             lambda: socket.getaddrinfo(token + ".invalid", 80)):
    try:
        call()
    except OSError:
        pass
"""


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=str(ROOT), WANT_ENV_SHA=_sha(SECRET_ENV), WANT_FILE_SHA=_sha(SECRET_FILE))
    full.update(env)
    return subprocess.run([*MIRROR_PY, *argv, "--", sys.executable, "-c", APP], capture_output=True, text=True,
                          timeout=120, env=full, cwd=str(ROOT))


def _assert_private(out: subprocess.CompletedProcess, *also: str) -> None:
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr}"
    assert out.stdout == ""  # the app prints nothing, so anything here is mirror-py's
    for value in (SECRET_ENV, SECRET_FILE, *also):
        for shown in (value, value[len("env-"):] if value.startswith("env-") else value[-16:]):
            assert shown not in out.stderr, f"a secret is in mirror-py's output:\n{out.stderr}"


@pytest.fixture(scope="module")
def secret_pod(network: Network):
    # Names from /etc/hosts only: the unknown host fails at once instead of waiting for a DNS server.
    files = {SECRET_PATH: SECRET_FILE + "\n", "/etc/nsswitch.conf": "hosts: files\n"}
    return network.add_pod(PodSpec(name="vault", env={"VAULT_TOKEN": SECRET_ENV}, files=files, servers=True))


@pytest.mark.parametrize("verbosity", [[], ["-v"], ["-vv"]], ids=["default", "-v", "-vv"])
def test_local_target_keeps_env_and_file_values_out_of_the_output(secret_pod, verbosity):
    out = _run(["exec", *verbosity, "--target", f"pid/{secret_pod.pid}"],
               {"ECHO_HOST": "127.0.0.1", "ECHO_PORT": str(TCP_ECHO_PORT)})
    _assert_private(out)
    if verbosity:
        assert "agent ready" in out.stderr  # -v did say things, just not those


SERVERS = ROOT / "tests" / "sandbox" / "servers.py"
MANIFEST = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: staging}}
---
apiVersion: v1
kind: Secret
metadata: {{name: vault, namespace: staging}}
type: Opaque
stringData:
  token: {SECRET_ENV}
  credentials.txt: {SECRET_FILE}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: billing, namespace: staging}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: billing}}}}
  template:
    metadata: {{labels: {{app: billing}}}}
    spec:
      containers:
        - name: app
          image: python:3.12-slim
          command: [python3, {SERVERS}, tcp-echo, --bind, "0.0.0.0:7000"]
          env:
            - name: VAULT_TOKEN
              valueFrom: {{secretKeyRef: {{name: vault, key: token}}}}
          readinessProbe: {{tcpSocket: {{port: 7000}}}}
          volumeMounts: [{{name: vault, mountPath: /etc/app, readOnly: true}}]
      volumes: [{{name: vault, secret: {{secretName: vault}}}}]
"""


@pytest.fixture(scope="module")
def cluster():
    yield from sandbox_cluster(MANIFEST)


@pytest.mark.parametrize("verbosity", [[], ["-v"], ["-vv"]], ids=["default", "-v", "-vv"])
@pytest.mark.parametrize("mode", ["exec", "ephemeral"])
def test_pod_target_keeps_env_and_file_values_out_of_the_output(cluster, mode, verbosity):
    out = _run(["exec", *verbosity, "--target", "deploy/billing", "--agent-mode", mode],
               {"KUBECONFIG": cluster.kubeconfig, "ECHO_HOST": "127.0.0.1", "ECHO_PORT": "7000"})
    token = yaml.safe_load(Path(cluster.kubeconfig).read_text())["users"][0]["user"]["token"]
    _assert_private(out, token)
