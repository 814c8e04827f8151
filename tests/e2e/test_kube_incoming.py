"""Incoming traffic on Kubernetes targets, against the sandbox cluster: what each agent mode can do, said
clearly when it cannot, and the warning for a stolen probe port. The clients are in the host's network
namespace, like another node's."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time

import pytest

from tests.sandbox.cluster import Cluster

from .conftest import MIRROR_PY, ROOT, STEAL_IMAGE, sandbox_cluster, terminate
from .test_incoming import APP, _wait_ready

MANIFEST = (ROOT / "examples" / "k8s" / "sandbox.yaml").read_text()
PORT = 8000  # deploy/api serves http.server on 8000, with a tcpSocket readiness probe on the port named http


@pytest.fixture(scope="module")
def cluster():
    yield from sandbox_cluster(MANIFEST)


def _run_app(cluster: Cluster, tmp_path, *flags: str) -> tuple[subprocess.Popen, str]:
    log = tmp_path / "seen.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=cluster.kubeconfig)
    proc = subprocess.Popen([*MIRROR_PY, "exec", "--target", "deploy/api", "-n", "staging", *flags, "--",
                             sys.executable, APP, "http", str(PORT), str(log)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT), start_new_session=True)
    _wait_ready(proc, timeout=60)
    return proc, str(log)


def _get(ip: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(ip, PORT, timeout=10)
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


def _pod(cluster: Cluster):
    return cluster.pod(cluster.pod_names("staging", "api-")[0], "staging")


def _chains(cluster: Cluster) -> list[str]:
    out = _pod(cluster).exec_output(["iptables", "-w", "-t", "nat", "-S"])
    return [line for line in out.splitlines() if "MIRRORPY" in line]


def test_exec_agent_mirrors_but_cannot_steal_and_says_why(cluster, tmp_path):
    pod = _pod(cluster)
    proc, log = _run_app(cluster, tmp_path, "--agent-mode", "exec")  # mirror: a packet socket needs NET_RAW only
    try:
        status, body = _get(pod.ip, "/app.yaml")
        assert status == 200 and body.startswith(b"greeting: hello from staging")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not os.path.exists(log):
            time.sleep(0.05)
        assert json.loads(open(log).read().splitlines()[0])["path"] == "/app.yaml"
    finally:
        terminate(proc)

    proc, _ = _run_app(cluster, tmp_path, "--agent-mode", "exec", "--incoming", "steal")
    try:
        status, body = _get(pod.ip, "/app.yaml")
        assert status == 200 and body.startswith(b"greeting"), "the pod keeps its traffic"
    finally:
        err = terminate(proc)
    assert "steal of port 8000 failed, the target keeps its traffic" in err, err
    assert "the agent has no CAP_NET_ADMIN" in err
    assert "agent mode exec runs the agent in the target container, which has no NET_ADMIN" in err
    assert "--agent-mode ephemeral" in err
    assert _chains(cluster) == []


def test_ephemeral_agent_steals_and_warns_about_the_readiness_probe(cluster, tmp_path):
    pod = _pod(cluster)
    proc, _ = _run_app(cluster, tmp_path, "--agent-mode", "ephemeral", "--incoming", "steal", "--agent-image",
                       STEAL_IMAGE)
    try:
        status, body = _get(pod.ip, "/stolen")
        answer = json.loads(body)
        assert status == 200 and answer["server"] == "local" and answer["sockname"] == [pod.ip, PORT]
        assert _chains(cluster)
    finally:
        err = terminate(proc)
    assert ("stealing port 8000 without an HTTP filter takes the readiness probe of container app "
            "(tcpSocket on port 8000) too") in err, err
    assert _chains(cluster) == []
    status, body = _get(pod.ip, "/app.yaml")
    assert status == 200 and body.startswith(b"greeting")
