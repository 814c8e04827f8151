"""The pytest plugin: one session per run, before collection, shared by xdist workers."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import ROOT

SUITE = '''
import json, os, socket, urllib.request

POD_VALUE = os.environ.get("POD_ONLY")  # read at import time, during collection


def test_env_at_collection():
    assert POD_VALUE == "from-the-pod"


def test_network_and_dns_from_the_pod():
    body = json.loads(urllib.request.urlopen("http://api.pod.internal:8081/t", timeout=10).read())
    assert body["server"] == "loopback"
    assert socket.gethostname() == "api-7d9f"


def test_local_block(mirror):
    with mirror.local():
        try:
            socket.getaddrinfo("api.pod.internal", 80)
            resolved = True
        except socket.gaierror:
            resolved = False
    assert resolved is False
    assert socket.getaddrinfo("api.pod.internal", 80)
'''


def _run_pytest(tmp_path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_in_pod.py").write_text(SUITE)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("POD_ONLY", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args, str(tmp_path)],
                          capture_output=True, text=True, timeout=180, env=env, cwd=str(tmp_path))


def test_plugin_runs_the_suite_in_the_pod(pod, tmp_path):
    out = _run_pytest(tmp_path, "--mirror-target", f"pid/{pod.pid}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 passed" in out.stdout


def test_plugin_with_xdist_workers_sharing_one_session(pod, tmp_path):
    out = _run_pytest(tmp_path, "--mirror-target", f"pid/{pod.pid}", "-n", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 passed" in out.stdout


def test_unreachable_target_stops_the_run_with_one_line(tmp_path):
    out = _run_pytest(tmp_path, "--mirror-target", "pid/999999999")
    assert out.returncode != 0
    assert "mirror-py: no process with PID 999999999" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert "passed" not in out.stdout and "error" not in out.stdout.lower()


def test_unreachable_cluster_stops_the_run_with_one_line(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    suite = tmp_path / "suite"
    suite.mkdir()
    env_backup = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kubeconfig)
    try:
        out = _run_pytest(suite, "--mirror-target", "deploy/api")
    finally:
        if env_backup is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = env_backup
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert any("mirror-py:" in line and "cannot reach the Kubernetes API server" in line for line in lines), out.stderr
    assert "Traceback" not in out.stdout + out.stderr and "passed" not in out.stdout
