"""A Kubernetes API server that accepts connections and never answers: every command ends with one clear line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from .conftest import MIRROR_PY, ROOT

KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- name: silent
  cluster:
    server: http://127.0.0.1:{port}
contexts:
- name: silent
  context: {{cluster: silent, user: dev, namespace: staging}}
current-context: silent
users:
- name: dev
  user: {{token: abc}}
"""


@pytest.fixture
def silent_server(tmp_path):
    """Accepts every connection (the kernel's backlog does) and never reads or answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG.format(port=server.getsockname()[1]))
    yield str(path)
    server.close()


@pytest.mark.parametrize("argv", [
    ["ls", "--request-timeout", "1"],
    ["doctor", "--request-timeout", "1"],
    ["exec", "--target", "deploy/api", "--agent-startup-timeout", "1", "--", sys.executable, "-c", "pass"],
], ids=["ls", "doctor", "exec"])
def test_a_silent_api_server_ends_the_command_with_one_line(silent_server, argv):
    env = dict(os.environ, KUBECONFIG=silent_server, PYTHONPATH=str(ROOT))
    # The bound below is far beyond the 1 s timeouts: reaching it means a wait that never ended.
    out = subprocess.run([*MIRROR_PY, *argv], capture_output=True, text=True, timeout=60, env=env, cwd=str(ROOT))
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert "cannot reach the Kubernetes API server" in out.stdout + out.stderr, out
    assert "timed out" in (out.stdout + out.stderr).lower()
