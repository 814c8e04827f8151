"""Cluster-side faults under a live session, against the sandbox cluster: a deployment rolling out a new pod, the
API server restarting, and the kubelet's streaming idle timeout. Each test runs an app that keeps using the
target and checks that it carries on — and how soon.

The cluster is this module's own: rollouts and restarts must not disturb other tests' sessions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.sandbox.cluster import Cluster

from .conftest import MIRROR_PY, ROOT, STEAL_IMAGE, sandbox_cluster, terminate
from .test_incoming import APP as INCOMING_APP
from .test_incoming import _wait_ready
from .test_kube_incoming import PORT, _get

MANIFEST = (ROOT / "examples" / "k8s" / "sandbox.yaml").read_text()
BACK_WITHIN = 5.0  # new operations succeed within this many seconds of the target being back

# Pings redis through the target every 0.1 s, one JSON line per attempt with the monotonic time (one clock for
# the whole machine, so the test can compare it with its own). Runs until the file named by STOP exists.
PINGER = (
    "import json, os, socket, sys, time\n"
    "stop = sys.argv[1]\n"
    "while not os.path.exists(stop):\n"
    "    t = time.monotonic()\n"
    "    try:\n"
    "        with socket.create_connection(('redis', 6379), timeout=3) as s:\n"
    "            s.sendall(b'PING\\r\\n'); ok = s.recv(100).strip() == b'+PONG'\n"
    "        print(json.dumps({'t': t, 'ok': ok}), flush=True)\n"
    "    except OSError as e:\n"
    "        print(json.dumps({'t': t, 'ok': False, 'error': type(e).__name__ + ': ' + str(e)}), flush=True)\n"
    "    time.sleep(0.1)\n"
)


@pytest.fixture(scope="module")
def cluster():
    yield from sandbox_cluster(MANIFEST)


def _env(cluster: Cluster) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=cluster.kubeconfig)


def _start_pinger(cluster: Cluster, tmp_path, *flags: str) -> tuple[subprocess.Popen, str]:
    stop = str(tmp_path / "stop")
    proc = subprocess.Popen([*MIRROR_PY, "exec", "--target", "deploy/api", "-n", "staging", *flags, "--",
                             sys.executable, "-c", PINGER, stop], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(cluster), cwd=str(ROOT), start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the first attempt: the session is up
    assert line and json.loads(line)["ok"], line + proc.stderr.read()
    return proc, stop


def _finish_pinger(proc: subprocess.Popen, stop: str) -> tuple[list[dict], str]:
    open(stop, "w").close()
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    return [json.loads(line) for line in out.splitlines()], err


def _first_success_after(attempts: list[dict], t: float) -> float:
    later = [a["t"] for a in attempts if a["ok"] and a["t"] >= t]
    assert later, f"no successful attempt after the target was back: {attempts[-5:]}"
    return later[0] - t


def _agent_jobs(cluster: Cluster) -> list[str]:
    return [j["metadata"]["name"] for j in cluster.store.list("jobs", "staging")
            if j["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") == "mirror-py"]


@pytest.mark.parametrize("mode", ["exec", "job"])
def test_api_server_restart_under_a_live_session(cluster, tmp_path, mode):
    """The API server goes away for 3 s (every exec stream with it) and comes back on the same address: the app
    never crashes, its calls fail with OSErrors meanwhile, and the session reconnects with a new agent. A job
    agent's old Job is deleted once the new one serves, and the last one when the session ends."""
    proc, stop = _start_pinger(cluster, tmp_path, "--agent-mode", mode)
    try:
        first_jobs = _agent_jobs(cluster)
        time.sleep(0.5)
        cluster.restart_apiserver(down_for=3.0)
        back = time.monotonic()
        time.sleep(BACK_WITHIN + 1)
        jobs_after = _agent_jobs(cluster)
    finally:
        attempts, err = _finish_pinger(proc, stop)
    if mode == "job":
        assert len(first_jobs) == 1 and len(jobs_after) == 1 and jobs_after != first_jobs, (first_jobs, jobs_after)
        deadline = time.monotonic() + 10
        while _agent_jobs(cluster) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _agent_jobs(cluster) == []
    assert "lost the agent" in err and "cannot reach the Kubernetes API server" in err, err
    assert "reconnected to pod staging/api-" in err, err
    assert err.count("reconnect failed") == 1, err  # the same failure is said once, not on every retry
    assert any(not a["ok"] for a in attempts)  # the outage was seen by the app, as OSErrors, not a crash
    took = _first_success_after(attempts, back)
    assert took < BACK_WITHIN, f"the first success came {took:.1f} s after the API server was back"


def test_rollout_moves_the_session_and_its_steal_to_the_new_pod(cluster, tmp_path):
    """``kubectl rollout restart``: a new ReplicaSet's pod becomes Ready, then the old pod is deleted. The session
    follows the target to the new pod — a new ephemeral agent there, the steal subscription restored — and new
    requests to the new pod reach the local app within seconds of the old pod's end."""
    from kubernetes import client

    log = tmp_path / "seen.log"
    proc = subprocess.Popen([*MIRROR_PY, "exec", "--target", "deploy/api", "-n", "staging", "--agent-mode",
                             "ephemeral", "--incoming", "steal", "--agent-image", STEAL_IMAGE, "--", sys.executable,
                             INCOMING_APP, "http",
                             str(PORT), str(log)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(cluster), cwd=str(ROOT), start_new_session=True)
    err = ""
    try:
        _wait_ready(proc, timeout=60)
        old = cluster.pod_names("staging", "api-")[0]
        status, body = _get(cluster.pod(old, "staging").ip, "/before")
        assert status == 200 and json.loads(body)["server"] == "local"

        apps = client.AppsV1Api(client.ApiClient(cluster.configuration("admin")))
        restarted = {"kubectl.kubernetes.io/restartedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        apps.patch_namespaced_deployment("api", "staging", {"spec": {"template": {"metadata": {
            "annotations": restarted}}}})
        deadline = time.monotonic() + 60
        while cluster.store.get("pods", "staging", old) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        gone = time.monotonic()
        assert cluster.store.get("pods", "staging", old) is None, "the rollout did not replace the pod"
        new = [name for name in cluster.pod_names("staging", "api-") if name != old]
        assert len(new) == 1 and new[0].rsplit("-", 2)[1] != old.rsplit("-", 2)[1]  # a new ReplicaSet's pod
        new_ip = cluster.pod(new[0], "staging").ip

        answer: dict = {}
        while time.monotonic() - gone < 30:
            try:
                status, body = _get(new_ip, "/after")
                answer = json.loads(body) if status == 200 and body.startswith(b"{") else {}
            except (OSError, ValueError):
                answer = {}
            if answer.get("server") == "local":
                break
            time.sleep(0.1)
        took = time.monotonic() - gone
        assert answer.get("server") == "local" and answer["sockname"] == [new_ip, PORT], answer
        assert took < BACK_WITHIN, f"the steal came back {took:.1f} s after the old pod ended"
    finally:
        err = terminate(proc)
    assert "lost the agent" in err and f"reconnected to pod staging/{new[0]}" in err, err
    assert "Traceback" not in err, err


IDLE_APP = (
    "import socket, time\n"
    "def ping(s):\n"
    "    s.sendall(b'PING\\r\\n'); return s.recv(100).strip().decode()\n"
    "held = socket.create_connection(('redis', 6379), timeout=5)\n"
    "print('before', ping(held), flush=True)\n"
    "time.sleep(5)  # nothing at all goes through the session\n"
    "try:\n"
    "    print('held', ping(held), flush=True)\n"
    "except OSError as e:\n"
    "    print('held', type(e).__name__, flush=True)\n"
    "for _ in range(100):\n"
    "    try:\n"
    "        with socket.create_connection(('redis', 6379), timeout=3) as s:\n"
    "            print('new', ping(s), flush=True); break\n"
    "    except OSError:\n"
    "        time.sleep(0.1)\n"
)


@pytest.mark.parametrize("keepalive", [0.5, 20.0], ids=["keepalive-below-the-timeout", "keepalive-above-it"])
def test_exec_idle_timeout(cluster, tmp_path, keepalive):
    """The kubelet cuts an exec stream that carries no data for its streaming idle timeout (4 h by default, 5 min
    on hardened clusters; 2 s here). The session's keep-alive pings are data on the stream, so a quiet session
    with a pinging interval below the timeout keeps its agent and its open connections. With the interval above
    the timeout the cut really happens — and the session still recovers: a new agent, a new connection works."""
    config = tmp_path / "mirror-py.toml"
    config.write_text(f"[agent]\nkeepalive_interval = {keepalive}\n")
    cluster.exec_idle_timeout = 2.0
    closes = cluster.exec_idle_closes
    try:
        out = subprocess.run([*MIRROR_PY, "exec", "--config", str(config), "--target", "deploy/api", "-n", "staging",
                              "--", sys.executable, "-c", IDLE_APP], capture_output=True, text=True, timeout=120,
                             env=_env(cluster), cwd=str(ROOT))
    finally:
        cluster.exec_idle_timeout = None
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "before +PONG" and lines[-1] == "new +PONG", out.stdout + out.stderr
    if keepalive < 2.0:
        assert cluster.exec_idle_closes == closes, out.stderr
        assert lines[1] == "held +PONG" and "lost the agent" not in out.stderr, out.stdout + out.stderr
    else:
        assert cluster.exec_idle_closes > closes
        assert lines[1] in ("held ConnectionResetError", "held "), out.stdout  # reset, or EOF
        assert "lost the agent" in out.stderr, out.stderr
