"""Exec over SPDY/3.1 end to end: a Role that grants ``create`` on ``pods/exec`` but not ``get`` (the SPDY era's
Roles, still common) refuses the exec websocket; mirror-py falls back to SPDY as kubectl does, and its session
works unchanged over it. The sandbox's SPDY exec is judged by a real client: Debian's kubectl 1.20, which
speaks only SPDY for exec (unpacked into tests/.tools by ``scripts/system-packages.sh test``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.sandbox.cluster import Cluster

from .conftest import MIRROR_PY, ROOT, sandbox_cluster
from .proxies import ConnectProxy

KUBECTL_120 = ROOT / "tests" / ".tools" / "kubernetes-client" / "usr" / "bin" / "kubectl"
NAMESPACE = "staging"
READ_PODS = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}
USERS = {
    "exec-create-only": [READ_PODS, {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}],
    "exec-get-only": [READ_PODS, {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get"]}],
}
# Bulk both ways through the agent (1 MiB up to Redis in the pod and back), and the pod's name.
APP = """
import socket
s = socket.create_connection(("redis", 6379))
value = bytes(range(256)) * 4096
set_k = b"*3\\r\\n$3\\r\\nSET\\r\\n$1\\r\\nk\\r\\n$%d\\r\\n%s\\r\\n" % (len(value), value)
s.sendall(set_k + b"*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n")
want = b"+OK\\r\\n$%d\\r\\n%s\\r\\n" % (len(value), value)
got = b""
while len(got) < len(want):
    got += s.recv(65536)
print(socket.gethostname(), got == want)
"""


@pytest.fixture(scope="module")
def cluster():
    yield from sandbox_cluster((ROOT / "examples" / "k8s" / "sandbox.yaml").read_text())


@pytest.fixture(scope="module")
def kubeconfigs(cluster: Cluster, tmp_path_factory) -> dict[str, str]:
    """A kubeconfig per user, each a copy of the cluster's with that user's context made current."""
    out = {}
    for user, rules in USERS.items():
        token = cluster.add_user(user, rules, [NAMESPACE])
        config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
        config["users"].append({"name": user, "user": {"token": token}})
        config["contexts"].append({"name": user, "context": {"cluster": "sandbox", "user": user,
                                                             "namespace": NAMESPACE}})
        config["current-context"] = user
        path = tmp_path_factory.mktemp(user) / "kubeconfig"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        out[user] = str(path)
    out["admin"] = cluster.kubeconfig
    return out


def _pod(cluster: Cluster) -> str:
    return cluster.pod_names(NAMESPACE, "api-")[0]


def _mirror(kubeconfig: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=kubeconfig)
    return subprocess.run([*MIRROR_PY, *args], capture_output=True, text=True, timeout=120, env=env, cwd=str(ROOT))


def _exec_calls(cluster: Cluster, user: str) -> list[tuple[str, int]]:
    return [(c.method, c.code) for c in cluster.calls if c.user == user and c.resource == "pods/exec"]


def test_a_role_with_create_only_runs_a_session_over_spdy(cluster, kubeconfigs):
    pod = _pod(cluster)
    out = _mirror(kubeconfigs["exec-create-only"], "exec", "-v", "--target", f"pod/{pod}", "--",
                  sys.executable, "-c", APP)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [pod, "True"]
    # The websocket (a GET) was refused for want of get; the SPDY upgrade (a POST, verb create) was not.
    assert _exec_calls(cluster, "exec-create-only") == [("GET", 403), ("POST", 101)]
    fallback = [line for line in out.stderr.splitlines() if "SPDY" in line]
    assert fallback[0] == ("mirror-py: the API server refused the exec websocket (HTTP 403); exec over SPDY/3.1, "
                           "as kubectl does")
    assert "Traceback" not in out.stderr


def test_a_role_with_get_only_is_told_what_is_missing(cluster, kubeconfigs):
    """get allows the websocket's GET but not, since Kubernetes 1.35, the create it also needs; SPDY needs create
    too: the user learns the verb to ask for, in one line."""
    out = _mirror(kubeconfigs["exec-get-only"], "exec", "--target", f"pod/{_pod(cluster)}", "--",
                  sys.executable, "-c", "print(1)")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert 'cannot create resource "pods/exec"' in out.stderr
    assert _exec_calls(cluster, "exec-get-only") == [("GET", 403), ("POST", 403)]


def _kubectl(kubeconfig: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    if not KUBECTL_120.exists():
        pytest.fail(f"{KUBECTL_120} is missing: run scripts/system-packages.sh test (it unpacks kubectl 1.20)")
    return subprocess.run([str(KUBECTL_120), "--kubeconfig", kubeconfig, *args], input=stdin,
                          capture_output=True, timeout=120)


@pytest.mark.parametrize("user", ["exec-create-only", "admin"])
def test_kubectl_120_execs_with_stdin_stdout_stderr_and_the_exit_code(cluster, kubeconfigs, user):
    pod = _pod(cluster)
    out = _kubectl(kubeconfigs[user], "exec", "-i", "-n", NAMESPACE, pod, "-c", "app", "--", "sh", "-c",
                   "cat; echo to-stderr >&2; exit 3", stdin=b"line one\nline two\n")
    assert (out.returncode, out.stdout) == (3, b"line one\nline two\n"), out.stderr
    assert out.stderr.decode().splitlines() == ["to-stderr", "command terminated with exit code 3"]


def test_kubectl_120_streams_megabytes_both_ways(cluster, kubeconfigs):
    """Several MiB of stdin, its end as the process' EOF (SPDY half-closes), and the same back on stdout."""
    data = os.urandom(3 << 20)
    out = _kubectl(kubeconfigs["admin"], "exec", "-i", "-n", NAMESPACE, _pod(cluster), "-c", "app", "--", "cat",
                   stdin=data)
    assert out.returncode == 0, out.stderr
    assert out.stdout == data


def test_kubectl_120_is_refused_without_create(cluster, kubeconfigs):
    out = _kubectl(kubeconfigs["exec-get-only"], "exec", "-i", "-n", NAMESPACE, _pod(cluster), "-c", "app", "--",
                   "true")
    assert out.returncode == 1
    assert out.stderr.decode().strip() == (
        f'Error from server (Forbidden): pods "{_pod(cluster)}" is forbidden: User "exec-get-only" cannot create '
        f'resource "pods/exec" in API group "" in the namespace "{NAMESPACE}"')


def test_doctor_passes_a_role_with_create_only_and_says_how_exec_goes(cluster, kubeconfigs):
    """doctor must not tell a user to fix what works: with create alone, the agent's exec (over SPDY) does, and
    doctor's own exec into the target says so by running python3 there."""
    out = _mirror(kubeconfigs["exec-create-only"], "doctor", "--target", f"pod/{_pod(cluster)}")
    exec_line = next(line for line in out.stdout.splitlines() if "RBAC for agent mode exec" in line)
    assert not exec_line.startswith("FIX"), out.stdout
    assert "without get on pods/exec, exec goes over SPDY/3.1 instead of the websocket" in exec_line
    assert "has python3 3." in out.stdout


def test_spdy_exec_takes_the_proxy_road_too(cluster, kubeconfigs, tmp_path):
    """The fallback's connection goes where the websocket's and the REST calls' go: through the kubeconfig's
    proxy-url, with its credentials."""
    config = yaml.safe_load(Path(kubeconfigs["exec-create-only"]).read_text())
    with ConnectProxy(credentials=("mirror", "pw")) as proxy:
        config["clusters"][0]["cluster"]["proxy-url"] = f"http://mirror:pw@127.0.0.1:{proxy.port}"
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(config))
        before = len(_exec_calls(cluster, "exec-create-only"))
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("https_proxy", "http_proxy", "no_proxy")}
        out = subprocess.run([*MIRROR_PY, "exec", "--target", f"pod/{_pod(cluster)}", "--", sys.executable, "-c",
                              "import socket; print(socket.gethostname())"], capture_output=True, text=True,
                             timeout=120, cwd=str(ROOT), env=dict(env, PYTHONPATH=str(ROOT), KUBECONFIG=str(path)))
        assert (out.returncode, out.stdout.strip()) == (0, _pod(cluster)), out.stderr
        assert _exec_calls(cluster, "exec-create-only")[before:] == [("GET", 403), ("POST", 101)]
        # the REST calls, the refused websocket and the SPDY exec: every one through the proxy
        assert proxy.refused == 0 and len(proxy.tunnels) >= 3
        assert {port for _host, port in proxy.tunnels} == {cluster.apiserver.port}
