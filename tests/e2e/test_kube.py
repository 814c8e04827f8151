"""Kubernetes targets end to end, against the sandbox cluster: the official client for the API, the exec
websocket for the channel, real pods behind them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.sandbox.cluster import Cluster

from .backends import Backend, SandboxBackend
from .conftest import MIRROR_PY, PROBE, ROOT, sandbox_cluster

UDP_ECHO = """
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: udp-echo
  namespace: staging
spec:
  replicas: 1
  selector:
    matchLabels: {app: udp-echo}
  template:
    metadata:
      labels: {app: udp-echo}
    spec:
      containers:
        - name: echo
          image: python:3.12-slim
          command:
            - python3
            - -c
            - |
              import socket
              s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
              s.bind(("0.0.0.0", 9999))
              while True:
                  d, a = s.recvfrom(65536)
                  s.sendto(b"echo:" + d, a)
---
apiVersion: v1
kind: Service
metadata:
  name: udp-echo
  namespace: staging
spec:
  selector: {app: udp-echo}
  ports:
    - {name: udp, port: 9999, targetPort: 9999, protocol: UDP}
"""
# A target that declares its user (so the ephemeral agent runs as that user, with no capability) and then makes
# itself non-dumpable, which closes its /proc/PID to everyone without CAP_SYS_PTRACE, its own user included.
UNDUMPABLE = """
---
apiVersion: v1
kind: Pod
metadata: {name: undumpable, namespace: staging}
spec:
  securityContext: {runAsUser: 1000, runAsGroup: 1000}
  containers:
    - name: app
      image: python:3.12-slim
      command: [python3, -c, "import ctypes, time; ctypes.CDLL(None).prctl(4, 0); time.sleep(1e9)"]
"""
MANIFEST_TEXT = (ROOT / "examples" / "k8s" / "sandbox.yaml").read_text() + UDP_ECHO + UNDUMPABLE
MANIFEST = ROOT / "examples" / "k8s" / "sandbox.yaml"

APP = (
    "import json, os, socket\n"
    "out = {'hostname': socket.gethostname(), 'env': {k: os.environ.get(k) for k in "
    "('APP_ENV', 'SECRET_API_TOKEN', 'POD_NAME', 'ISTIO_META_APP_CONTAINERS')}}\n"
    "out['short'] = sorted({i[4][0] for i in socket.getaddrinfo('redis', 6379, socket.AF_INET)})\n"
    "out['fqdn'] = sorted({i[4][0] for i in socket.getaddrinfo('redis.' + os.environ['E2E_NS'] + "
    "'.svc.cluster.local', 6379, socket.AF_INET)})\n"
    "s = socket.create_connection(('redis', 6379), timeout=10); s.sendall(b'PING\\r\\n')\n"
    "out['redis'] = s.recv(100).decode().strip(); s.close()\n"
    "import urllib.request\n"
    "out['api'] = urllib.request.urlopen('http://api:8000/app.yaml', timeout=10).read().decode().splitlines()[0]\n"
    "out['loopback'] = urllib.request.urlopen('http://127.0.0.1:8000/app.yaml', timeout=10).status\n"
    "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(10)\n"
    "u.sendto(b'ping', ('udp-echo', 9999)); out['udp'] = u.recvfrom(100)[0].decode()\n"
    "print(json.dumps(out))\n"
)


def _run(cluster: Cluster | Backend, *args: str, app: str = APP, env: dict | None = None, timeout: float = 120):
    ns = getattr(cluster, "namespace", "staging") if isinstance(cluster, Backend) else "staging"
    full = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=cluster.kubeconfig, E2E_NS=ns)
    full.update(env or {})
    return subprocess.run([*MIRROR_PY, *args, "--", sys.executable, "-c", app], capture_output=True, text=True,
                          timeout=timeout, env=full, cwd=str(ROOT))


@pytest.fixture(scope="module")
def cluster():
    yield from sandbox_cluster(MANIFEST_TEXT)


def _check_app(out: subprocess.CompletedProcess, cluster: Cluster | Backend) -> dict:
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    backend = cluster if isinstance(cluster, Backend) else SandboxBackend(cluster)
    pod = backend.pod_names("api-")[0]
    redis_ip = backend.pod_ip(backend.pod_names("redis-")[0])
    assert result["hostname"] == pod
    assert result["env"] == {"APP_ENV": "staging", "SECRET_API_TOKEN": "tok-1234567890", "POD_NAME": pod,
                             "ISTIO_META_APP_CONTAINERS": None}  # the app container, not the sidecar
    assert result["short"] == [redis_ip] and result["fqdn"] == [redis_ip]
    assert result["redis"] == "+PONG"
    assert result["api"] == "greeting: hello from staging"
    assert result["loopback"] == 200
    assert result["udp"] == "echo:ping"
    return result


def test_exec_agent_through_a_deployment(cluster):
    out = _run(cluster, "exec", "--target", "deploy/api", "-n", "staging")
    _check_app(out, cluster)
    assert "container 'app' (chosen by the kubectl.kubernetes.io/default-container annotation)" in out.stderr


def test_service_and_pod_targets_with_the_context_namespace(cluster):
    # The kubeconfig's context namespace is the manifest's (staging): no -n needed.
    _check_app(_run(cluster, "exec", "--target", "svc/api"), cluster)
    pod = cluster.pod_names("staging", "api-")[0]
    _check_app(_run(cluster, "exec", "--target", f"pod/{pod}/container/app"), cluster)


def test_v4_only_api_server():
    with Cluster.start(MANIFEST_TEXT, v4_only=True) as old:
        out = _run(old, "exec", "-v", "--target", "deploy/api")
        _check_app(out, old)
        assert "exec stream open (v4.channel.k8s.io)" in out.stderr
        # v4 cannot half-close stdin: the version probe must not end its own stream before python answers.
        doctor = subprocess.run([*MIRROR_PY, "doctor", "--target", "deploy/api"], capture_output=True, text=True,
                                env=dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=old.kubeconfig), timeout=60)
        assert "has python3 3." in doctor.stdout, doctor.stdout + doctor.stderr


def test_probe_parity_through_the_exec_channel(cluster):
    pod = cluster.pod_names("staging", "api-")[0]
    probe = open(PROBE).read().replace("name, *args = sys.argv[1:]", "name, *args = ['names', '127.0.0.1']")
    out = _run(cluster, "exec", "--target", "deploy/api", app=probe)
    assert out.returncode == 0, out.stderr
    through = json.loads(out.stdout.strip().splitlines()[-1])
    native = json.loads(cluster.pod(pod, "staging").exec_output([sys.executable, PROBE, "names", "127.0.0.1"])
                        .strip().splitlines()[-1])
    assert through == native


# ---------------------------------------------------------------------------------------------- errors
def _assert_error(out: subprocess.CompletedProcess, *fragments: str) -> None:
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("mirror-py: error:"), out.stderr
    for fragment in fragments:
        assert fragment in line, line


def test_client_certificate_authentication(cluster):
    _check_app(_run(cluster, "exec", "--target", "deploy/api", "--context", "sandbox-cert"), cluster)


def test_unknown_context(cluster):
    _assert_error(_run(cluster, "exec", "--target", "deploy/api", "--context", "nope"),
                  "context 'nope' is not in kubeconfig", "sandbox")


def test_unknown_namespace_suggests(cluster):
    _assert_error(_run(cluster, "exec", "--target", "deploy/api", "-n", "stagign"),
                  "namespace 'stagign' not found", "did you mean 'staging'")


def test_unknown_deployment_suggests(cluster):
    _assert_error(_run(cluster, "exec", "--target", "deploy/apii"), "deployment 'apii' not found", "'api'")


def test_no_ready_pod(cluster):
    pod = cluster.pod_names("staging", "redis-")[0]
    cluster.set_ready(pod, False, "staging")
    try:
        _assert_error(_run(cluster, "exec", "--target", "deploy/redis"), "no Running and Ready pod",
                      "Running but not Ready")
    finally:
        cluster.set_ready(pod, True, "staging")


def test_token_without_pods_exec(cluster):
    _assert_error(_run(cluster, "exec", "--target", "deploy/api", "--context", "sandbox-no-exec"),
                  "forbidden", "needs get and create on pods/exec in namespace staging")


def test_target_without_python(cluster):
    pod = cluster.pod_names("staging", "api-")[0]
    cluster.set_no_python(pod, "app", True, "staging")
    try:
        _assert_error(_run(cluster, "exec", "--target", "deploy/api", "--agent-mode", "exec"), "has no 'python3'",
                      "use --agent-mode ephemeral")
    finally:
        cluster.set_no_python(pod, "app", False, "staging")


def test_api_server_unreachable(cluster, tmp_path):
    broken = tmp_path / "kubeconfig"
    text = open(cluster.kubeconfig).read()
    broken.write_text(text.replace(cluster.base_url.split("//")[1].split("/")[0], "127.0.0.1:1"))
    _assert_error(_run(cluster, "exec", "--target", "deploy/api", env={"KUBECONFIG": str(broken)}),
                  "cannot reach the Kubernetes API server")


# ------------------------------------------------------------------------------------------ ls, doctor
def test_ls_lists_targets_as_target_syntax(cluster):
    env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=cluster.kubeconfig)
    out = subprocess.run([*MIRROR_PY, "ls"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "deployment/api" in out.stdout and "app, istio-proxy" in out.stdout
    assert "pod/" + cluster.pod_names("staging", "api-")[0] in out.stdout


def test_ls_and_doctor_json_for_scripts_and_editors(cluster):
    env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=cluster.kubeconfig)
    out = subprocess.run([*MIRROR_PY, "ls", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    assert listing["namespace"] == "staging"
    assert {"target": "deployment/api", "containers": ["app", "istio-proxy"], "state": "1/1 ready"} \
        in listing["targets"]
    bad = subprocess.run([*MIRROR_PY, "doctor", "--json", "--context", "sandbox-no-exec"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert bad.returncode == 1, bad.stderr
    report = json.loads(bad.stdout)
    assert report["ok"] is False
    failed = [c for c in report["checks"] if not c["ok"]]
    assert any(c["what"].startswith("RBAC for agent mode exec") and "create pods/exec" in c["fix"] for c in failed)


def test_doctor_reports_rbac_and_python(cluster):
    env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=cluster.kubeconfig)
    ok = subprocess.run([*MIRROR_PY, "doctor", "--target", "deploy/api"], capture_output=True, text=True, env=env,
                        timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "has python3 3." in ok.stdout
    bad = subprocess.run([*MIRROR_PY, "doctor", "--context", "sandbox-no-exec"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert bad.returncode == 1
    assert "FIX  RBAC for agent mode exec" in bad.stdout and "create pods/exec" in bad.stdout


# ------------------------------------------------------------------------------------- agent placements
@pytest.mark.parametrize("mode", ["ephemeral", "job"])
def test_agent_modes(cluster, mode):
    out = _run(cluster, "exec", "--target", "deploy/api", "--agent-mode", mode)
    _check_app(out, cluster)
    assert f"via {'ephemeral container' if mode == 'ephemeral' else 'job pod'}" in out.stderr
    if mode == "job":  # the agent job is deleted at the end
        assert not [n for n in cluster.pod_names("staging") if n.startswith("mirror-py-")]


def test_auto_falls_back_to_ephemeral_without_python(cluster):
    pod = cluster.pod_names("staging", "api-")[0]
    cluster.set_no_python(pod, "app", True, "staging")
    try:
        out = _run(cluster, "exec", "--target", "deploy/api")
    finally:
        cluster.set_no_python(pod, "app", False, "staging")
    _check_app(out, cluster)
    assert "using an ephemeral agent container instead" in out.stderr


def test_targetless_session_gets_cluster_dns_and_leaves_nothing(cluster):
    app = ("import json, socket; s = socket.create_connection(('redis', 6379), timeout=10); s.sendall(b'PING\\r\\n');"
           "print(json.dumps(s.recv(100).decode().strip()))")
    out = _run(cluster, "exec", app=app)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == "+PONG"
    assert "no target: creating agent pod" in out.stderr
    assert not [n for n in cluster.pod_names("staging") if n.startswith("mirror-py-")]


def test_ephemeral_containers_disabled_suggests_job(cluster):
    cluster.ephemeral_containers_enabled = False
    try:
        _assert_error(_run(cluster, "exec", "--target", "deploy/api", "--agent-mode", "ephemeral"),
                      "ephemeral containers are disabled", "--agent-mode job")
    finally:
        cluster.ephemeral_containers_enabled = True


def test_ephemeral_agent_refused_by_the_target_says_why(cluster):
    """An agent that runs as the target's declared user but is still refused (the process made itself
    non-dumpable) says what it was given and what to do, in one line."""
    _assert_error(_run(cluster, "exec", "--target", "pod/undumpable", "--agent-mode", "ephemeral", "--incoming",
                       "off"), "running as the target's declared user", "non-dumpable", "--agent-mode job")


def test_image_pull_failure_names_the_reason(cluster):
    _assert_error(_run(cluster, "exec", "--target", "deploy/api", "--agent-mode", "ephemeral",
                       "--agent-image", "registry.invalid/does-not-exist:1"), "did not start", "ImagePull")


def test_a_slow_image_pull_extends_the_start_up_timeout_and_says_so(cluster):
    """The ephemeral container's image takes 4 s to pull (the kubelet's Pulling event, no Pulled yet) and the
    start-up timeout is 1.5 s: the session waits for the pull instead of failing, and says why."""
    cluster.ephemeral_start_delay = 4.0
    try:
        out = _run(cluster, "exec", "--target", "deploy/api", "--agent-mode", "ephemeral",
                   "--agent-startup-timeout", "1.5")
    finally:
        cluster.ephemeral_start_delay = 0.2
    _check_app(out, cluster)
    assert "still pulling python:3.12-slim after 1.5 s; waiting for the pull" in out.stderr, out.stderr


def test_token_without_ephemeral_permission(cluster):
    _assert_error(_run(cluster, "exec", "--target", "deploy/api", "--agent-mode", "ephemeral",
                       "--context", "sandbox-no-ephemeral"), "patch on pods/ephemeralcontainers")


def test_pod_deleted_mid_session_reconnects_to_the_replacement(cluster, tmp_path):
    """The deployment replaces a deleted pod; the session re-resolves the target and carries on."""
    import time

    from kubernetes import client

    ready, deleted = tmp_path / "ready", tmp_path / "deleted"
    app = (
        "import os, socket, time\n"
        "def ping():\n"
        "    with socket.create_connection(('redis', 6379), timeout=3) as s:\n"
        "        s.sendall(b'PING\\r\\n'); return s.recv(100).strip().decode()\n"
        f"print('before', ping(), flush=True); open({str(ready)!r}, 'w').close()\n"
        f"while not os.path.exists({str(deleted)!r}): time.sleep(0.05)\n"
        "start = time.monotonic()\n"
        "while True:\n"
        "    try:\n"
        "        print('after', ping(), round(time.monotonic() - start, 1), flush=True); break\n"
        "    except OSError as e:\n"
        "        if time.monotonic() - start > 60: print('gave up', e); break\n"
        "        time.sleep(0.2)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=cluster.kubeconfig, E2E_NS="staging")
    proc = subprocess.Popen([*MIRROR_PY, "exec", "--target", "deploy/udp-echo", "--", sys.executable, "-c", app],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    old = cluster.pod_names("staging", "udp-echo-")[0]
    api = client.CoreV1Api(client.ApiClient(cluster.configuration("admin")))
    api.delete_namespaced_pod(old, "staging", grace_period_seconds=0)
    deleted.touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == "before +PONG" and lines[1].startswith("after +PONG"), out + err
    assert "lost the agent" in err
    reconnected = [line for line in err.splitlines() if "reconnected to pod staging/udp-echo-" in line]
    assert reconnected and old not in reconnected[0], err
    assert "Traceback" not in err
