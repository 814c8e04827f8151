"""Proves the sandbox cluster behaves like the parts of Kubernetes mirror-py relies on.

The Kubernetes end-to-end tests are only as good as this test bed: if the API server accepted a request a
real one rejects, or the exec websocket differed from the real protocol, mirror-py could pass here and fail
on a cluster.  So these tests drive it with the official ``kubernetes`` client and a raw ``websockets``
client and check the wire details of shared/k8s-exec-protocol.md, plus the real namespaces, DNS and
processes behind the API.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="sandbox pods are Linux namespaces"),
    pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() != 0, reason="the sandbox cluster needs root"),
    pytest.mark.skipif(
        not all(shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin") for t in ("ip", "nsenter", "unshare", "dnsmasq")),
        reason="needs iproute2, util-linux and dnsmasq-base",
    ),
]

kubernetes = pytest.importorskip("kubernetes")
websockets_sync = pytest.importorskip("websockets.sync.client")
from kubernetes import client as k8s  # noqa: E402
from kubernetes import config as k8s_config  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

from tests.sandbox.cluster import Cluster  # noqa: E402
from tests.sandbox.netpod import BRIDGE_PREFIX, NETNS_PREFIX  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "k8s" / "sandbox.yaml"
EXTRA = """
apiVersion: v1
kind: Service
metadata: {name: db, namespace: staging}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{port: 5432}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: staging}
spec:
  serviceName: db
  replicas: 2
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: postgres:16}]
---
apiVersion: v1
kind: Pod
metadata:
  name: nopy
  namespace: staging
  labels: {app: nopy}
  annotations: {sandbox.mirror-py/no-python: "true"}
spec:
  containers: [{name: main, image: gcr.io/distroless/static}]
"""
V5, V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    with Cluster.start(EXAMPLE, kubeconfig) as c:
        c.apply(EXTRA)
        yield c
    assert not kubeconfig.exists(), "the kubeconfig the cluster wrote must be removed on close"


@pytest.fixture(scope="module")
def core(cluster: Cluster) -> Any:
    return k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=cluster.kubeconfig))


def api_pod(cluster: Cluster) -> str:
    return next(n for n in cluster.pod_names("staging", "api-"))


# ------------------------------------------------------------------------------------------ websocket helpers


def ws_url(cluster: Cluster, pod: str, command: list[str], *, ns: str = "staging", **flags: Any) -> str:
    params = [("command", c) for c in command]
    opts = {"stdin": False, "stdout": True, "stderr": True, "tty": False, **flags}
    container = opts.pop("container", None)
    if container:
        params.append(("container", container))
    params += [(k, "true" if v else "false") for k, v in opts.items()]
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params)
    base = cluster.base_url.replace("https://", "wss://")
    return f"{base}/api/v1/namespaces/{ns}/pods/{pod}/exec?{query}"


def ssl_context(cluster: Cluster) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cluster.ca_file)


def ws_connect(cluster: Cluster, url: str, protocols: list[str], token: str | None = None) -> Any:
    token = token or cluster.tokens["admin"]
    return websockets_sync.connect(
        url,
        ssl=ssl_context(cluster),
        additional_headers={"Authorization": f"Bearer {token}"},
        subprotocols=protocols,  # type: ignore[arg-type]
        compression=None,
        proxy=None,
        open_timeout=30,  # generous: a loaded 2-core machine can be slow to start the exec process
    )


def collect(conn: Any, timeout: float = 10.0) -> tuple[bytes, bytes, dict[str, Any] | None, list[bytes]]:
    """Read to the end: (stdout, stderr, parsed status, raw messages)."""
    out, err, status, raw = b"", b"", None, []
    deadline = time.monotonic() + timeout
    while True:
        try:
            msg = conn.recv(timeout=max(0.1, deadline - time.monotonic()))
        except Exception:  # closed
            break
        raw.append(msg)
        if msg[:1] == b"\x01":
            out += msg[1:]
        elif msg[:1] == b"\x02":
            err += msg[1:]
        elif msg[:1] == b"\x03":
            status = json.loads(msg[1:])
    return out, err, status, raw


def http_error(cluster: Cluster, url: str, protocols: list[str], token: str | None = None) -> tuple[int, bytes]:
    with pytest.raises(InvalidStatus) as info:
        ws_connect(cluster, url, protocols, token).close()
    return info.value.response.status_code, info.value.response.body or b""


# ------------------------------------------------------------------------------------------ REST


def test_objects_pods_and_selectors_through_the_official_client(cluster: Cluster, core: Any) -> None:
    pods = core.list_namespaced_pod("staging", label_selector="app=api").items
    assert len(pods) == 1
    pod = pods[0]
    assert pod.status.phase == "Running" and pod.status.pod_ip.startswith("10.")
    rs_name, suffix = pod.metadata.name.rsplit("-", 1)
    assert len(suffix) == 5 and pod.metadata.labels["pod-template-hash"] == rs_name.split("-")[-1]
    assert pod.metadata.owner_references[0].kind == "ReplicaSet"
    assert pod.metadata.annotations["kubectl.kubernetes.io/default-container"] == "app"
    assert [c.name for c in pod.spec.containers] == ["app", "istio-proxy"]
    assert all(cs.ready and cs.container_id.startswith("containerd://") for cs in pod.status.container_statuses)

    by_field = core.list_namespaced_pod("staging", field_selector=f"metadata.name={pod.metadata.name}").items
    assert [p.metadata.name for p in by_field] == [pod.metadata.name]
    running = {
        p.metadata.name for p in core.list_namespaced_pod("staging", field_selector="status.phase=Running").items
    }
    assert {"db-0", "db-1", "nopy", pod.metadata.name} <= running
    assert not core.list_namespaced_pod("staging", label_selector="app in (db),app!=db").items
    assert len(core.list_namespaced_pod("staging", label_selector="app in (db, nopy)").items) == 3
    assert "staging" in {n.metadata.name for n in core.list_namespace().items}
    assert core.read_namespaced_pod("db-1", "staging").spec.hostname == "db-1"

    apps = k8s.AppsV1Api(core.api_client)
    deploy = apps.read_namespaced_deployment("api", "staging")
    assert deploy.status.ready_replicas == 1
    rs = apps.list_namespaced_replica_set("staging", label_selector="app=api").items
    assert [r.metadata.name for r in rs] == [rs_name]
    assert rs[0].metadata.owner_references[0].name == "api"
    assert apps.read_namespaced_stateful_set("db", "staging").status.ready_replicas == 2
    assert apps.list_namespaced_daemon_set("staging").items == []
    assert k8s.BatchV1Api(core.api_client).list_namespaced_job("staging").items == []
    assert k8s.VersionApi(core.api_client).get_code().minor == "31"

    with pytest.raises(k8s.ApiException) as info:
        core.read_namespaced_pod("nope", "staging")
    assert info.value.status == 404
    assert json.loads(info.value.body)["message"] == 'pods "nope" not found'
    with pytest.raises(k8s.ApiException) as info:
        core.read_namespace("nope")
    assert info.value.status == 404


def test_an_application_set_up_and_torn_down_through_the_api(cluster: Cluster, core: Any) -> None:
    """What a test suite does on a real cluster: a namespace with a ConfigMap, a Deployment and a Service
    created through the API (its pods start like the manifest's), a name taken twice refused, and the
    namespace deleted with everything in it, processes included."""
    apps = k8s.AppsV1Api(core.api_client)
    core.create_namespace({"metadata": {"name": "made-by-api"}})
    core.create_namespaced_config_map("made-by-api", {"metadata": {"name": "cfg"}, "data": {"k": "v"}})
    labels = {"app": "web"}
    apps.create_namespaced_deployment("made-by-api", {
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": "web", "image": "python:3.12-slim", "command": ["sleep", "infinity"],
                                     "env": [{"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cfg",
                                                                                             "key": "k"}}}]}]}}}})
    core.create_namespaced_service("made-by-api", {"metadata": {"name": "web"},
                                                   "spec": {"selector": labels, "ports": [{"port": 80}]}})
    deadline = time.monotonic() + 30
    while True:
        pods = core.list_namespaced_pod("made-by-api", label_selector="app=web").items
        if pods and pods[0].status.phase == "Running":
            break
        assert time.monotonic() < deadline, "the Deployment's pod did not start"
        time.sleep(0.1)
    name = pods[0].metadata.name
    assert cluster.pod(name, "made-by-api").exec_output(["sh", "-c", "echo $K"]).strip() == "v"
    assert core.read_namespaced_service("web", "made-by-api").spec.cluster_ip
    pid = cluster.container_pid(name, "web", "made-by-api")
    with pytest.raises(k8s.ApiException) as info:
        core.create_namespaced_config_map("made-by-api", {"metadata": {"name": "cfg"}})
    assert info.value.status == 409 and json.loads(info.value.body)["reason"] == "AlreadyExists"

    gone = json.loads(core.delete_namespace("made-by-api", _preload_content=False).data)
    assert gone["kind"] == "Namespace" and gone["status"]["phase"] == "Terminating"  # as the real one answers
    with pytest.raises(k8s.ApiException) as info:
        core.read_namespace("made-by-api")
    assert info.value.status == 404
    assert not core.list_namespaced_pod("made-by-api").items
    assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()


def test_client_certificate_context_and_bad_token(cluster: Cluster) -> None:
    cert_api = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=cluster.kubeconfig, context="sandbox-cert"))
    assert cert_api.list_namespaced_pod("staging", label_selector="app=redis").items
    cfg = cluster.configuration("admin")
    cfg.refresh_api_key_hook = None  # it would re-read the good token from the kubeconfig
    cfg.api_key = {"BearerToken": "Bearer not-a-token"}
    with pytest.raises(k8s.ApiException) as info:
        k8s.CoreV1Api(k8s.ApiClient(cfg)).list_namespaced_pod("staging")
    assert info.value.status == 401


def test_watch_sees_a_created_pod_start_and_go(cluster: Cluster, core: Any) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "agent-", "labels": {"app": "agent"}},
        "spec": {"containers": [{"name": "agent", "image": "python:3.12-slim"}], "restartPolicy": "Never"},
    }
    created = core.create_namespaced_pod("staging", body)
    name = created.metadata.name
    assert name.startswith("agent-") and created.status.phase == "Pending"
    seen: list[tuple[str, str]] = []
    watch = kubernetes.watch.Watch()
    for event in watch.stream(
        core.list_namespaced_pod, "staging", field_selector=f"metadata.name={name}", timeout_seconds=20
    ):
        seen.append((event["type"], event["object"].status.phase))
        if event["object"].status.phase == "Running":
            watch.stop()
    assert seen[0][0] == "ADDED" and seen[-1][1] == "Running"
    rv = core.read_namespaced_pod(name, "staging").metadata.resource_version
    core.delete_namespaced_pod(name, "staging", grace_period_seconds=0)
    kinds = []
    for event in watch.stream(
        core.list_namespaced_pod, "staging", label_selector="app=agent", resource_version=rv, timeout_seconds=20
    ):
        kinds.append(event["type"])
        if event["type"] == "DELETED":
            watch.stop()
    assert kinds[-1] == "DELETED"
    assert name not in cluster.pod_names("staging")


# ------------------------------------------------------------------------------------------ exec


def test_exec_v5_stdin_half_close_stdout_and_exit_code(cluster: Cluster) -> None:
    pod = api_pod(cluster)
    url = ws_url(cluster, pod, ["sh", "-c", "tr a-z A-Z; echo err >&2; exit 3"], container="app", stdin=True)
    with ws_connect(cluster, url, [V5, V4]) as conn:
        assert conn.subprotocol == V5
        assert conn.recv(timeout=5) == b"\x01"  # the greeting: only the channel byte
        conn.send(b"\x00hello ")
        conn.send(b"\x00")  # a channel byte alone is a 0-byte write, not EOF
        conn.send(b"\x00world")
        conn.send(b"\xff\x00")  # v5 CLOSE of stdin
        out, err, status, raw = collect(conn)
    assert out == b"HELLO WORLD" and err == b"err\n"
    assert raw[-1][:1] == b"\x03", "the status is the last message"
    assert status is not None and status["status"] == "Failure" and status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert conn.close_code == 1000


def test_exec_runs_in_the_container_namespaces_and_env(cluster: Cluster) -> None:
    pod = api_pod(cluster)
    script = "cat /etc/hostname; echo $APP_ENV; cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; "
    script += "readlink /proc/self/ns/net; cat /proc/self/cgroup"
    with ws_connect(cluster, ws_url(cluster, pod, ["sh", "-c", script], container="app"), [V5]) as conn:
        out, _, status, _ = collect(conn)
    lines = out.decode().splitlines()
    assert lines[:3] == [pod, "staging", "staging"]
    sandbox = cluster.pods[pod]
    assert lines[3] == os.readlink(f"/proc/{sandbox.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    container_id = cluster.runtime(pod, "staging").containers["app"].id
    assert container_id in "".join(lines[4:]), "exec'd processes join the container's cgroup (found by container ID)"
    assert status == {"metadata": {}, "status": "Success"}


def test_exec_v4_and_client_order_and_v4_only(cluster: Cluster) -> None:
    pod = api_pod(cluster)
    url = ws_url(cluster, pod, ["echo", "four"], container="app")
    with ws_connect(cluster, url, [V4, V5]) as conn:
        assert conn.subprotocol == V4, "the server takes the first protocol in the client's order"
        out, _, status, raw = collect(conn)
    assert raw[0] == b"\x01" and out == b"four\n" and status == {"metadata": {}, "status": "Success"}
    with ws_connect(
        cluster, ws_url(cluster, pod, ["true"], container="app", stdout=False), ["base64.channel.k8s.io"]
    ) as conn:
        assert conn.subprotocol == "base64.channel.k8s.io"
        assert conn.recv(timeout=5) == "2", "greeting on stderr when stdout is not requested; base64 is text"
    cluster.v4_only = True
    try:
        with ws_connect(cluster, url, [V5, V4]) as conn:
            assert conn.subprotocol == V4
            assert collect(conn)[0] == b"four\n"
    finally:
        cluster.v4_only = False


def test_exec_raw_403_when_no_protocol_matches(cluster: Cluster) -> None:
    pod = api_pod(cluster)
    path = ws_url(cluster, pod, ["true"], container="app").split("127.0.0.1:", 1)[1].split("/", 1)[1]
    request = (
        f"GET /{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: v9.channel.example, v1.other\r\n"
        f"Authorization: Bearer {cluster.tokens['admin']}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", cluster.apiserver.port), timeout=10) as raw:
        with ssl_context(cluster).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(request.encode())
            response = b""
            while b"\r\n\r\n" not in response:
                response += tls.recv(4096)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"content-length: 0" in head.lower() and body == b""


def test_exec_errors_before_the_upgrade(cluster: Cluster) -> None:
    pod = api_pod(cluster)
    code, body = http_error(cluster, ws_url(cluster, pod, ["true"], container="app"), [V5], token="wrong")
    assert code == 401 and json.loads(body)["reason"] == "Unauthorized"
    code, body = http_error(cluster, ws_url(cluster, pod, ["true"], container="app"), [V5], cluster.tokens["no-exec"])
    status = json.loads(body)
    assert code == 403 and status["reason"] == "Forbidden"
    assert f'pods "{pod}" is forbidden: User "no-exec" cannot create resource "pods/exec"' in status["message"]
    code, body = http_error(cluster, ws_url(cluster, "missing", ["true"]), [V5])
    assert code == 404 and json.loads(body)["message"] == 'pods "missing" not found'
    code, body = http_error(cluster, ws_url(cluster, pod, ["true"]), [V5])
    assert code == 400 and "a container name must be specified" in json.loads(body)["message"]
    assert "choose one of: [app istio-proxy]" in json.loads(body)["message"]
    code, body = http_error(cluster, ws_url(cluster, pod, ["true"], container="nope"), [V5])
    assert code == 400 and json.loads(body)["message"] == f"container nope is not valid for pod {pod}"
    # One container: no container parameter needed.
    with ws_connect(cluster, ws_url(cluster, "db-0", ["echo", "ok"]), [V5]) as conn:
        assert collect(conn)[0] == b"ok\n"


def test_no_python_container(cluster: Cluster) -> None:
    url = ws_url(cluster, "nopy", ["python3", "-c", "print(1)"])
    with ws_connect(cluster, url, [V5, V4]) as conn:
        assert conn.subprotocol == V5
        _, _, status, _ = collect(conn)  # v5: upgraded first, the runtime error comes as the status
    assert status is not None and status["status"] == "Failure" and status["code"] == 500
    assert 'exec: "python3": executable file not found in $PATH' in status["message"]
    code, body = http_error(cluster, url, [V4])  # v4: the runtime refuses before upgrading
    assert code == 500 and "executable file not found" in json.loads(body)["message"]
    with ws_connect(cluster, ws_url(cluster, "nopy", ["sh", "-c", "python3 -V"]), [V5]) as conn:
        _, err, status, _ = collect(conn)
    assert status is not None and status["details"]["causes"] == [{"reason": "ExitCode", "message": "127"}]
    assert b"not found" in err
    with ws_connect(cluster, ws_url(cluster, "db-0", ["python3", "-c", "print(6*7)"]), [V5]) as conn:
        assert collect(conn)[0] == b"42\n", "other containers still have python3"


def test_official_client_stream(cluster: Cluster, core: Any) -> None:
    from kubernetes.stream import stream

    out = stream(
        core.connect_get_namespaced_pod_exec,
        api_pod(cluster),
        "staging",
        container="app",
        command=["sh", "-c", "cat /etc/config/app.yaml; echo $DATABASE_PASSWORD"],
        stdin=False,
        stdout=True,
        stderr=True,
        tty=False,
    )
    assert "greeting: hello from staging" in out and "s3cr3t-staging-password" in out


# ------------------------------------------------------------------------------------------ agents


def _wait_ephemeral(core: Any, pod: str, name: str, want: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = core.read_namespaced_pod(pod, "staging").status.ephemeral_container_statuses or []
        for status in statuses:
            if status.name == name:
                state = status.state
                if want == "running" and state.running:
                    return status
                if state.waiting and state.waiting.reason == want:
                    return status
        time.sleep(0.05)
    raise AssertionError(f"ephemeral container {name} never reached {want}: {statuses}")


def test_ephemeral_containers(cluster: Cluster, core: Any) -> None:
    pod = api_pod(cluster)
    agent = {
        "name": "mirror-agent",
        "image": "python:3.12-slim",
        "command": ["python3", "-c", "import time; time.sleep(3600)"],
        "targetContainerName": "app",
        "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW", "SYS_PTRACE"]}},
    }
    core.patch_namespaced_pod_ephemeralcontainers(pod, "staging", {"spec": {"ephemeralContainers": [agent]}})
    status = _wait_ephemeral(core, pod, "mirror-agent", "running")
    runtime = cluster.runtime(pod, "staging").ephemeral["mirror-agent"]
    assert status.container_id == f"containerd://{runtime.id}"
    assert os.readlink(f"/proc/{runtime.proc.pid}/ns/net") == os.readlink(f"/proc/{cluster.pods[pod].pid}/ns/net")
    # exec into it, as a client would
    with ws_connect(cluster, ws_url(cluster, pod, ["hostname"], container="mirror-agent"), [V5]) as conn:
        assert collect(conn)[0].decode().strip() == pod

    bad = {"name": "bad-agent", "image": "registry.example/does-not-exist:1"}
    core.patch_namespaced_pod_ephemeralcontainers(pod, "staging", {"spec": {"ephemeralContainers": [bad]}})
    waiting = _wait_ephemeral(core, pod, "bad-agent", "ImagePullBackOff")
    assert "does-not-exist" in waiting.state.waiting.message
    names = [c.name for c in core.read_namespaced_pod(pod, "staging").spec.ephemeral_containers]
    assert names == ["mirror-agent", "bad-agent"], "patches append by name"

    with pytest.raises(k8s.ApiException) as info:  # names are unique across all containers
        core.patch_namespaced_pod_ephemeralcontainers(
            pod, "staging", {"spec": {"ephemeralContainers": [dict(agent, name="app")]}}
        )
    assert info.value.status == 422
    restricted = k8s.CoreV1Api(k8s.ApiClient(cluster.configuration("no-ephemeral")))
    with pytest.raises(k8s.ApiException) as info:
        restricted.patch_namespaced_pod_ephemeralcontainers(
            pod, "staging", {"spec": {"ephemeralContainers": [dict(agent, name="x")]}}
        )
    assert info.value.status == 403
    cluster.ephemeral_containers_enabled = False
    try:
        with pytest.raises(k8s.ApiException) as info:
            core.patch_namespaced_pod_ephemeralcontainers(
                pod, "staging", {"spec": {"ephemeralContainers": [dict(agent, name="y")]}}
            )
        assert info.value.status == 404 and json.loads(info.value.body)["details"] == {}
    finally:
        cluster.ephemeral_containers_enabled = True


def test_job_pod_runs_in_host_namespaces_with_host_pid(cluster: Cluster, core: Any) -> None:
    batch = k8s.BatchV1Api(core.api_client)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"generateName": "mirror-agent-"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "hostPID": True,
                    "restartPolicy": "Never",
                    "nodeName": "sandbox-node",
                    "containers": [
                        {"name": "agent", "image": "python:3.12-slim", "securityContext": {"privileged": True}}
                    ],
                }
            },
        },
    }
    created = batch.create_namespaced_job("staging", job)
    job_name = created.metadata.name
    deadline = time.monotonic() + 15
    while True:
        pods = core.list_namespaced_pod("staging", label_selector=f"job-name={job_name}").items
        if pods and pods[0].status.phase == "Running":
            break
        assert time.monotonic() < deadline, "job pod never ran"
        time.sleep(0.05)
    job_pod = pods[0].metadata.name
    target = cluster.container_pid(api_pod(cluster), "app", "staging")
    target_id = cluster.runtime(api_pod(cluster), "staging").containers["app"].id
    script = f"readlink /proc/self/ns/net; grep -l {target_id} /proc/[0-9]*/cgroup | head -n 50"
    with ws_connect(cluster, ws_url(cluster, job_pod, ["sh", "-c", script]), [V5]) as conn:
        out, _, status, _ = collect(conn)
    lines = out.decode().splitlines()
    assert status == {"metadata": {}, "status": "Success"}
    assert lines[0] == os.readlink("/proc/self/ns/net"), "a hostPID job pod runs in the host namespaces"
    assert f"/proc/{target}/cgroup" in lines[1:], "the target container's pid is found by its container ID"
    batch.delete_namespaced_job(job_name, "staging", propagation_policy="Background")
    deadline = time.monotonic() + 15
    while core.list_namespaced_pod("staging", label_selector=f"job-name={job_name}").items:
        assert time.monotonic() < deadline, "job pod not deleted with Background propagation"
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------ DNS, RBAC, calls


def test_cluster_dns_from_inside_a_pod(cluster: Cluster) -> None:
    pod = cluster.pods[api_pod(cluster)]
    redis_ip = cluster.store.get("pods", "staging", cluster.pod_names("staging", "redis-")[0])["status"]["podIP"]
    code = (
        "import socket\n"
        "def ip(n):\n"
        "    try:\n"
        "        return socket.getaddrinfo(n, 6379, socket.AF_INET)[0][4][0]\n"
        "    except socket.gaierror as e:\n"
        "        return 'gaierror:%d' % e.errno\n"
        "for n in ['redis', 'redis.staging', 'redis.staging.svc.cluster.local', 'db-1.db', 'no-such-svc',"
        " 'kubernetes.default']:\n"
        "    print(ip(n))\n"
    )
    lines = pod.exec_output([sys.executable, "-c", code]).split()
    db1 = cluster.store.get("pods", "staging", "db-1")["status"]["podIP"]
    diagnostics = f"{lines} {cluster.dns.records} {cluster.dns.log_file.read_text()[-2000:]}"
    assert lines[:4] == [redis_ip, redis_ip, redis_ip, db1], diagnostics
    assert lines[4] == f"gaierror:{socket.EAI_NONAME}", "unknown names are NXDOMAIN, not a timeout"
    assert lines[5] == cluster.network.gateway
    svc = k8s.CoreV1Api(k8s.ApiClient(cluster.configuration())).read_namespaced_service("redis", "staging")
    assert svc.spec.cluster_ip == redis_ip


def test_access_reviews_and_recorded_calls(cluster: Cluster) -> None:
    def review(user: str, verb: str, resource: str, sub: str = "") -> bool:
        api = k8s.AuthorizationV1Api(k8s.ApiClient(cluster.configuration(user)))
        attrs = {"namespace": "staging", "verb": verb, "resource": resource, "subresource": sub}
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attrs}}  # fmt: skip
        return api.create_self_subject_access_review(body).status.allowed

    cluster.clear_calls()
    assert review("admin", "create", "pods", "exec")
    assert not review("no-exec", "create", "pods", "exec")
    assert review("no-exec", "patch", "pods", "ephemeralcontainers")
    assert not review("no-ephemeral", "patch", "pods", "ephemeralcontainers")
    assert review("no-ephemeral", "get", "pods", "exec")
    calls = cluster.calls
    assert [c.user for c in calls] == ["admin", "no-exec", "no-exec", "no-ephemeral", "no-ephemeral"]
    assert all(c.verb == "create" and c.resource == "selfsubjectaccessreviews" and c.code == 201 for c in calls)
    assert calls[0].api_group == "authorization.k8s.io" and calls[0].method == "POST"


# ------------------------------------------------------------------------------------------ CLI


def _our_leftovers(before: set[str]) -> set[str]:
    names = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    names |= set(os.listdir("/sys/class/net"))
    return {n for n in names - before if n.startswith((NETNS_PREFIX, BRIDGE_PREFIX))}


def _dnsmasq_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "mirror-py-sandbox/mpc-"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def _start_up(tmp_path: Path, kubeconfig: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.sandbox", "up", "--manifest", str(EXAMPLE), "--kubeconfig", str(kubeconfig)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "press Ctrl-C" in line:
            return proc
    proc.wait()
    raise AssertionError("".join(lines))


def test_up_command_cleans_up_on_sigint_and_after_sigkill(tmp_path: Path) -> None:
    before_names = _our_leftovers(set())
    before_dns = _dnsmasq_pids()
    kubeconfig = tmp_path / "kubeconfig"
    proc = _start_up(tmp_path, kubeconfig)
    try:
        assert kubeconfig.exists() and _our_leftovers(before_names), "up builds namespaces and a bridge"
        api = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=str(kubeconfig)))
        assert api.list_namespaced_pod("staging", label_selector="app=redis").items
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    assert not _our_leftovers(before_names) and not kubeconfig.exists() and _dnsmasq_pids() == before_dns

    proc = _start_up(tmp_path, kubeconfig)
    proc.kill()
    proc.communicate(timeout=30)
    assert _our_leftovers(before_names), "a SIGKILLed run leaves its namespaces behind"
    subprocess.run([sys.executable, "-m", "tests.sandbox", "cleanup"], cwd=ROOT, check=True, capture_output=True)
    assert not _our_leftovers(before_names) and _dnsmasq_pids() == before_dns and not kubeconfig.exists()


# ------------------------------------------------------------------------------------------ more protocol


def _raw_upgrade(cluster: Cluster, url: str, protocol: str) -> ssl.SSLSocket:
    """A hand-made websocket upgrade, to send frames no well-behaved client library would."""
    path = url.split(f"127.0.0.1:{cluster.apiserver.port}", 1)[1]
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {protocol}\r\nAuthorization: Bearer {cluster.tokens['admin']}\r\n\r\n"
    )
    raw = socket.create_connection(("127.0.0.1", cluster.apiserver.port), timeout=10)
    tls = ssl_context(cluster).wrap_socket(raw, server_hostname="127.0.0.1")
    tls.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += tls.recv(1)
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert f"sec-websocket-protocol: {protocol}".encode() in head.lower()
    return tls


def _read_frame(tls: ssl.SSLSocket) -> tuple[int, bytes]:
    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = tls.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    b0, b1 = exact(2)
    length = b1 & 0x7F
    if length == 126:
        length = int.from_bytes(exact(2), "big")
    elif length == 127:
        length = int.from_bytes(exact(8), "big")
    assert not b1 & 0x80, "server frames are never masked"
    return b0 & 0x0F, exact(length)


def _masked(payload: bytes, opcode: int = 2) -> bytes:
    mask = os.urandom(4)
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _close_code(tls: ssl.SSLSocket) -> int:
    while True:
        opcode, payload = _read_frame(tls)
        if opcode == 0x8:
            return int.from_bytes(payload[:2], "big")


def test_protocol_violations_tear_the_connection_down(cluster: Cluster) -> None:
    url = ws_url(cluster, api_pod(cluster), ["cat"], container="app", stdin=True)
    with _raw_upgrade(cluster, url, V5) as tls:
        assert _read_frame(tls) == (0x2, b"\x01")
        tls.sendall(bytes([0x82, 3]) + b"\x00hi")  # unmasked client frame
        assert _close_code(tls) == 1002
    with _raw_upgrade(cluster, url, V5) as tls:
        assert _read_frame(tls) == (0x2, b"\x01")
        tls.sendall(_masked(b"\xff\x00\x00"))  # CLOSE with a wrong length
        assert _close_code(tls) == 1002
    with _raw_upgrade(cluster, url, V5) as tls:
        assert _read_frame(tls) == (0x2, b"\x01")
        tls.sendall(_masked(b"", opcode=0x9))  # the server answers pings with pongs
        assert _read_frame(tls) == (0xA, b"")
        tls.sendall(_masked(b"\x07junk") + _masked(b"") + _masked(b"\x00data") + _masked(b"\xff\x00"))
        tls.sendall(_masked(b"\x00after-close"))  # dropped: stdin is closed
        frames = []
        while True:
            opcode, payload = _read_frame(tls)
            if opcode == 0x8:
                break
            frames.append(payload)
    assert b"".join(f[1:] for f in frames if f[:1] == b"\x01") == b"data"
    assert frames[-1] == b'\x03{"metadata":{},"status":"Success"}'


def test_v4_has_no_half_close(cluster: Cluster) -> None:
    url = ws_url(cluster, api_pod(cluster), ["sh", "-c", "head -c 4; echo done"], container="app", stdin=True)
    with ws_connect(cluster, url, [V4]) as conn:
        conn.send(b"\xff\x00")  # channel 255 means nothing on v4: ignored
        conn.send(b"\x00abcd")
        out, _, status, _ = collect(conn)
    assert out == b"abcddone\n" and status == {"metadata": {}, "status": "Success"}


def test_exec_tty_with_resize(cluster: Cluster) -> None:
    url = ws_url(cluster, api_pod(cluster), ["sh", "-c", "read x; stty size; echo got $x"], container="app",
                 stdin=True, tty=True, stderr=False)  # fmt: skip
    with ws_connect(cluster, url, [V5]) as conn:
        conn.send(b"\x04" + json.dumps({"Width": 100, "Height": 40}).encode())
        conn.send(b"\x00hi\n")
        out, err, status, _ = collect(conn)
    assert b"40 100" in out and b"got hi" in out and err == b""
    assert status == {"metadata": {}, "status": "Success"}


def test_logs_and_controllers_replace_deleted_pods(cluster: Cluster, core: Any) -> None:
    pod = api_pod(cluster)
    ip = core.read_namespaced_pod(pod, "staging").status.pod_ip
    with socket.create_connection((ip, 8000), timeout=5) as conn:
        conn.sendall(b"GET /app.yaml HTTP/1.0\r\n\r\n")
        assert b"hello from staging" in conn.makefile("rb").read()
    deadline = time.monotonic() + 5
    while "GET /app.yaml" not in core.read_namespaced_pod_log(pod, "staging", container="app"):
        assert time.monotonic() < deadline
        time.sleep(0.05)

    old = core.read_namespaced_pod("db-0", "staging")
    core.delete_namespaced_pod("db-0", "staging")
    deadline = time.monotonic() + 15
    while True:
        with contextlib.suppress(k8s.ApiException):
            new = core.read_namespaced_pod("db-0", "staging")
            if new.metadata.uid != old.metadata.uid and new.status.phase == "Running":
                break
        assert time.monotonic() < deadline, "the StatefulSet did not recreate db-0"
        time.sleep(0.05)
    assert new.metadata.labels["statefulset.kubernetes.io/pod-name"] == "db-0"


def test_server_prefix_is_kept(tmp_path: Path) -> None:
    manifest = "apiVersion: v1\nkind: Pod\nmetadata: {name: solo}\nspec: {containers: [{name: c, image: busybox}]}\n"
    with Cluster.start(manifest, tmp_path / "kc", server_prefix="/k8s/clusters/c-42") as c:
        assert c.base_url.endswith("/k8s/clusters/c-42") and c.namespace == "default"
        api = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=c.kubeconfig))
        assert [p.metadata.name for p in api.list_namespaced_pod("default").items] == ["solo"]
        with ws_connect(c, ws_url(c, "solo", ["echo", "prefixed"], ns="default"), [V5]) as conn:
            assert collect(conn)[0] == b"prefixed\n"
        assert {call.path for call in c.calls} >= {"/k8s/clusters/c-42/api/v1/namespaces/default/pods"}


# ------------------------------------------------------------------------------------------ manifests


def test_manifest_validation_and_selectors() -> None:
    from tests.sandbox.manifest import (
        ApiError,
        ManifestError,
        load_manifest,
        parse_field_selector,
        parse_label_selector,
        strategic_merge,
    )

    objs = load_manifest(EXAMPLE)
    assert [o["kind"] for o in objs][:4] == ["Namespace", "ConfigMap", "Secret", "Service"]
    bad = {
        "apiVersion: v1\nkind: Deployment\nmetadata: {name: x}\n": "apiVersion",
        "apiVersion: v1\nkind: Widget\nmetadata: {name: x}\n": "unsupported kind",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {a: b}}\n"
        "  template: {metadata: {labels: {a: c}}, spec: {containers: [{name: c}]}}\n": "do not match",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: c, env: [{name: N, value: 1}]}]}\n":
        "quote it",
    }  # fmt: skip
    for text, message in bad.items():
        with pytest.raises(ManifestError, match=message):
            load_manifest(text)
    match = parse_label_selector("app in (a, b),tier!=front,!canary,env")
    assert match({"app": "a", "env": "x"}) and not match({"app": "a"}) and not match({"app": "c", "env": "x"})
    assert not match({"app": "b", "env": "x", "canary": ""}) and not match({"app": "b", "env": "x", "tier": "front"})
    assert parse_field_selector("pods", "status.phase!=Failed")({"metadata": {}, "status": {"phase": "Running"}})
    with pytest.raises(ApiError, match="field label not supported"):
        parse_field_selector("pods", "spec.nope=1")
    merged = strategic_merge(
        {"spec": {"ephemeralContainers": [{"name": "a", "image": "x"}]}},
        {"spec": {"ephemeralContainers": [{"name": "b", "image": "y"}]}},
    )
    assert [c["name"] for c in merged["spec"]["ephemeralContainers"]] == ["a", "b"]


def test_restarts_back_off_and_jobs_complete(cluster: Cluster, core: Any) -> None:
    crasher = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "crasher"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", "exit 2"]}]},
    }
    core.create_namespaced_pod("staging", crasher)
    batch = k8s.BatchV1Api(core.api_client)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once"},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
                 "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", "echo done"]}]}}},
    }  # fmt: skip
    batch.create_namespaced_job("staging", job)
    deadline = time.monotonic() + 15
    while True:
        statuses = core.read_namespaced_pod("crasher", "staging").status.container_statuses
        status = statuses[0] if statuses else None  # none until the kubelet has seen the pod
        done = batch.read_namespaced_job("once", "staging").status.succeeded
        if status is not None and status.restart_count >= 2 and done == 1:
            break
        assert time.monotonic() < deadline, (status, done)
        time.sleep(0.05)
    assert status.last_state.terminated.exit_code == 2
    pod = core.list_namespaced_pod("staging", label_selector="job-name=once").items[0]
    assert pod.status.phase == "Succeeded"
    assert core.read_namespaced_pod_log(pod.metadata.name, "staging") == "done\n"
    core.delete_namespaced_pod("crasher", "staging", grace_period_seconds=0)
    batch.delete_namespaced_job("once", "staging")  # default propagation for batch/v1: the pod is orphaned
    time.sleep(0.2)
    orphan = core.read_namespaced_pod(pod.metadata.name, "staging")
    assert not orphan.metadata.owner_references
    core.delete_namespaced_pod(pod.metadata.name, "staging", grace_period_seconds=0)


# ------------------------------------------------------------------------------------------ faults (last: they
# replace the api pod and restart the API server)


def test_exec_idle_timeout_cuts_a_quiet_stream_only(cluster: Cluster) -> None:
    """The kubelet's streaming idle timeout counts data either way; websocket pings do not reset it."""
    pod = api_pod(cluster)
    url = ws_url(cluster, pod, ["cat"], container="app", stdin=True)
    cluster.exec_idle_timeout = 1.0
    before = cluster.exec_idle_closes
    try:
        with ws_connect(cluster, url, [V5]) as conn:
            conn.recv(timeout=5)  # the greeting
            for i in range(6):  # 1.8 s of traffic, a message every 0.3 s: never idle
                conn.send(b"\x00" + f"{i}".encode())
                assert conn.recv(timeout=5) == b"\x01" + f"{i}".encode()
                started = time.monotonic()  # the last data
                time.sleep(0.3)
            assert cluster.exec_idle_closes == before
            closed = False
            while not closed and time.monotonic() - started < 5:  # then quiet, apart from websocket pings
                try:
                    conn.ping()
                    msg = conn.recv(timeout=0.3)
                except TimeoutError:
                    continue
                except ConnectionClosed:
                    closed = True
                else:
                    pytest.fail(f"a quiet stream sent {msg!r}")  # a cut stream gets no status frame
            assert closed and 0.9 < time.monotonic() - started < 3
        assert cluster.exec_idle_closes == before + 1
    finally:
        cluster.exec_idle_timeout = None


def test_rollout_restart_replaces_the_pod_through_a_new_replicaset(cluster: Cluster, core: Any) -> None:
    apps = k8s.AppsV1Api(core.api_client)
    old_pod = api_pod(cluster)
    old_rs = core.read_namespaced_pod(old_pod, "staging").metadata.owner_references[0].name
    patch = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "now"}}}}}
    apps.patch_namespaced_deployment("api", "staging", patch)  # what `kubectl rollout restart` sends
    deadline = time.monotonic() + 30
    while cluster.store.get("pods", "staging", old_pod) is not None:
        assert time.monotonic() < deadline, "the old pod was never deleted"
        time.sleep(0.05)
    time.sleep(0.5)  # nothing replaces the old ReplicaSet's pod
    pods = core.list_namespaced_pod("staging", label_selector="app=api").items
    assert len(pods) == 1 and pods[0].status.phase == "Running"
    new_rs = pods[0].metadata.owner_references[0].name
    assert new_rs != old_rs and pods[0].metadata.annotations["kubectl.kubernetes.io/restartedAt"] == "now"
    by_name = {rs.metadata.name: rs for rs in apps.list_namespaced_replica_set("staging").items}
    assert by_name[old_rs].spec.replicas == 0
    assert by_name[new_rs].metadata.annotations["deployment.kubernetes.io/revision"] == "2"
    assert apps.read_namespaced_deployment("api", "staging").metadata.generation == 2


def test_api_server_restart_keeps_its_address_and_drops_exec_streams(cluster: Cluster, core: Any) -> None:
    url = ws_url(cluster, api_pod(cluster), ["cat"], container="app", stdin=True)
    port = cluster.apiserver.port
    with ws_connect(cluster, url, [V5]) as conn:
        conn.recv(timeout=5)
        cluster.restart_apiserver(down_for=0.5)
        with pytest.raises(ConnectionClosed):
            conn.recv(timeout=5)  # the stream went with the old server
    assert cluster.apiserver.port == port
    assert core.read_namespaced_pod(api_pod(cluster), "staging").status.phase == "Running"  # same kubeconfig
