"""C extensions doing their own networking (libpq, libcurl, grpc's core) go through the target, by the same
rules as Python's sockets: real wheels from PyPI against the sandbox's ``staging`` pods, reached by Service
names that only the pod's DNS knows. And the layer is safe: late loads, a failing hook, C-level fork, exit
while C threads are busy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.sandbox import postgres

from .conftest import MIRROR_PY, ROOT, STEAL_IMAGE, Result, sandbox_cluster, terminate
from .test_incoming import _wait_ready

APP = str(Path(__file__).with_name("c_ext_app.py"))
MANIFESTS = (ROOT / "examples" / "k8s" / "sandbox.yaml", ROOT / "examples" / "service" / "postgres.yaml")
# Two more services run by this interpreter (grpcio is in its venv): an HTTP server and a gRPC server.
SERVICES = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: staging}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: python:3.12-slim
          command: [PYTHON, APP, web_server, "8080"]
          ports: [{name: http, containerPort: 8080}]
          readinessProbe: {tcpSocket: {port: http}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: staging}
spec:
  selector: {app: web}
  ports: [{name: http, port: 8080, targetPort: http}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: grpc-echo, namespace: staging}
spec:
  replicas: 1
  selector: {matchLabels: {app: grpc-echo}}
  template:
    metadata: {labels: {app: grpc-echo}}
    spec:
      containers:
        - name: grpc
          image: python:3.12-slim
          command: [PYTHON, APP, grpc_server, "50051", pod]
          ports: [{name: grpc, containerPort: 50051}]
          readinessProbe: {tcpSocket: {port: grpc}}
---
apiVersion: v1
kind: Service
metadata: {name: grpc-echo, namespace: staging}
spec:
  selector: {app: grpc-echo}
  ports: [{name: grpc, port: 50051, targetPort: grpc}]
"""


@pytest.fixture(scope="module")
def cluster():
    try:
        postgres.server_bin()
    except postgres.NoPostgres as exc:
        pytest.fail(f"these tests need a PostgreSQL server in the pod: {exc}")
    services = SERVICES.replace("PYTHON", json.dumps(sys.executable)).replace("APP", json.dumps(APP))
    yield from sandbox_cluster("\n---\n".join([*(p.read_text() for p in MANIFESTS), services]))


def _env(cluster, layer: bool, **extra: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=cluster.kubeconfig,
               MIRROR_PY_INTERPOSE_C_EXTENSIONS="1" if layer else "0", **extra)
    env.pop("GRPC_DNS_RESOLVER", None) if "GRPC_DNS_RESOLVER" not in extra else None
    return env


def run(cluster, scenario: str, *args: str, layer: bool = True, timeout: float = 120, **extra: str) -> Result:
    proc = subprocess.run([*MIRROR_PY, "exec", "--target", "deploy/api", "-n", "staging", "--",
                           sys.executable, APP, scenario, *args], capture_output=True, text=True,
                          env=_env(cluster, layer, **extra), cwd=str(ROOT), timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def serve(cluster, target: str, port: int, scenario: str, *args: str, layer: bool = True,
          incoming: str = "steal") -> subprocess.Popen:
    """A server app under ``mirror-py exec`` stealing (or mirroring) ``port`` of ``target``'s pod, once it says
    READY. Stealing needs iptables in the agent: an ephemeral agent of the steal image."""
    agent = ["--agent-mode", "ephemeral", "--agent-image", STEAL_IMAGE] if incoming == "steal" else []
    proc = subprocess.Popen([*MIRROR_PY, "exec", "--target", target, "-n", "staging", *agent,
                             "--incoming", incoming, "--", sys.executable, APP, scenario, str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(cluster, layer),
                            cwd=str(ROOT), start_new_session=True)
    _wait_ready(proc, timeout=90)
    return proc


def ok(result: Result) -> dict:
    assert result.code == 0, f"exit {result.code}:\n{result.stdout}\n{result.stderr}"
    return result.json


def pod_ip(cluster, name: str) -> str:
    return cluster.runtime(cluster.pod_names("staging", name)[0], "staging").ip


def test_psycopg2_query_transaction_and_server_side_cursor_by_service_name(cluster):
    res = run(cluster, "psycopg2")
    out = ok(res)
    assert out["version"].startswith(f"PostgreSQL {postgres.major_version()}.")
    assert out["client_addr"] == pod_ip(cluster, "api")  # the server saw a connection from the target pod
    assert out["rows_after_rollback"] == 0
    assert out["server_side_sum"] == 500500
    assert out["peer"] == "postgres"
    assert "does its networking in C" not in res.stderr  # covered now: no warning


def test_sqlalchemy_on_psycopg2(cluster):
    out = ok(run(cluster, "sqlalchemy"))
    assert out["driver"] == "psycopg2"
    assert out["version"].startswith(postgres.major_version() + ".")
    assert out["total"] == 55


def test_psycopg3_binary(cluster):
    out = ok(run(cluster, "psycopg3"))
    assert out["impl"] == "binary"  # libpq through the C extension, not the pure-Python implementation
    assert out["client_addr"] == pod_ip(cluster, "api")
    assert out["server_side_sum"] == 125250


def test_connection_refused_is_libpqs_own_error(cluster):
    out = ok(run(cluster, "refused"))
    ip = pod_ip(cluster, "postgres")
    assert f'connection to server at "postgres" ({ip}), port 5439 failed: Connection refused' in out["error"]


def test_pycurl_fetches_from_the_pods_service(cluster):
    out = ok(run(cluster, "pycurl"))
    assert out["status"] == 200
    assert "greeting: hello from staging" in out["body"]


def test_library_loaded_late_with_ctypes_cdll(cluster):
    out = ok(run(cluster, "late_cdll"))
    assert (out["status"], out["message"]) == (0, "")  # CONNECTION_OK: libpq reached the pod's server


def test_a_hook_that_raises_fails_the_c_call(cluster):
    res = run(cluster, "raising_hook")
    out = ok(res)
    assert out["error"] is not None, "the connect succeeded although mirror-py's code failed"
    assert "Input/output error" in out["error"]
    assert "mirror-py: error in the C-level connect() hook, the call fails: RuntimeError: injected failure" \
        in res.stderr


def test_c_level_fork_child_never_enters_python(cluster):
    out = ok(run(cluster, "c_fork"))
    assert out["parent"] == 0 and out["parent_hooked"] >= 1
    # fork() from C: libpq in the child calls libc directly (the local resolver does not know the name).
    assert out["c"]["hooked"] == 0 and out["c"]["status"] != 0
    assert 'could not translate host name "postgres"' in out["c"]["message"]
    # os.fork(): a Python child, interposed as its parent.
    assert out["os"]["status"] == 0 and out["os"]["hooked"] >= 1


def test_exit_while_grpc_threads_are_busy(cluster):
    res = run(cluster, "busy_exit", timeout=60, GRPC_DNS_RESOLVER="native")  # its lookups through getaddrinfo
    assert res.code == 0, f"exit {res.code}:\n{res.stderr}"
    assert "api" in json.loads(res.stdout.strip().splitlines()[-1])["hooked"]  # grpc's threads were routed
    assert "Fatal Python error" not in res.stderr


def test_layer_off_keeps_the_warning_and_the_laptops_network(cluster):
    res = run(cluster, "refused", layer=False)
    out = ok(res)
    assert 'could not translate host name "postgres"' in out["error"]
    assert "psycopg2 does its networking in C" in res.stderr


def test_uvicorn_on_uvloop_receives_stolen_requests_and_calls_a_service_by_name_with_httpx_and_aiohttp(cluster):
    ip = pod_ip(cluster, "api")
    proc = serve(cluster, "deploy/api", 8000, "uvicorn")
    try:
        with urllib.request.urlopen(f"http://{ip}:8000/call", timeout=30) as reply:
            answer = json.loads(reply.read())
    finally:
        err = terminate(proc)
    client = answer.pop("client")
    assert answer == {"server": "local", "web": "web says hi", "aiohttp": "web says hi", "loop": "uvloop"}, err
    assert not client.startswith("127.") and client != pod_ip(cluster, "api")  # the pod's client, not a relay


@pytest.mark.parametrize("resolver", [None, "ares", "native"])
def test_grpcio_client_calls_a_pods_server_by_service_name(cluster, resolver):
    """grpc's default resolver is its bundled c-ares, which sends DNS packets itself: they are answered with
    the pod's names. The native resolver calls getaddrinfo. mirror-py leaves the app's choice alone."""
    out = ok(run(cluster, "grpc_client", **({"GRPC_DNS_RESOLVER": resolver} if resolver else {})))
    assert out == {"reply": "pod:hello", "resolver": resolver}


def test_local_grpcio_server_receives_the_pods_stolen_grpc_traffic(cluster):
    import grpc

    ip = pod_ip(cluster, "grpc-echo")
    proc = serve(cluster, "deploy/grpc-echo", 50051, "grpc_server", "local")
    try:
        with grpc.insecure_channel(f"{ip}:50051") as channel:
            reply = channel.unary_unary("/echo.Echo/Say")(b"hi", timeout=30)
    finally:
        err = terminate(proc)
    assert reply == b"local:hi", err


def test_local_grpcio_server_receives_a_copy_of_the_pods_grpc_traffic(cluster, tmp_path):
    """Mirrored: the pod's server answers its client, and the local grpcio server (bind/listen from C) sees
    the same request."""
    import grpc

    ip = pod_ip(cluster, "grpc-echo")
    log = tmp_path / "received.log"
    proc = serve(cluster, "deploy/grpc-echo", 50051, "grpc_server", "local", str(log), incoming="mirror")
    try:
        with grpc.insecure_channel(f"{ip}:50051") as channel:
            reply = channel.unary_unary("/echo.Echo/Say")(b"copied", timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and b"copied" not in (log.read_bytes() if log.exists() else b""):
            time.sleep(0.1)
    finally:
        err = terminate(proc)
    assert reply == b"pod:copied", err
    assert log.exists() and log.read_bytes() == b"copied\n", err


def _laptop_nameserver() -> str:
    from mirror_py.shim import nameservers

    return nameservers.parse(Path(nameservers.PATH).read_text())[0]


@pytest.mark.parametrize("servers", ["own resolv.conf reading", "this machine's name server"])
def test_pycares_resolves_the_pods_names(cluster, servers):
    """c-ares sends its own DNS packets: to the name server of the resolv.conf it reads, or to the one it is
    given. Either way the pod's resolver answers, with the pod's search list for a short name."""
    args = [] if servers.startswith("own") else [_laptop_nameserver()]
    out = ok(run(cluster, "pycares", *args))
    assert out["fqdn"] == out["short"] == [out["python"]], out
    assert out["getaddrinfo"] == [out["grpc_python"]], out
    assert out["missing"] == "ARES_ENOTFOUND", out


def test_aiodns_resolves_a_service_by_its_short_name(cluster):
    out = ok(run(cluster, "aiodns"))
    assert out["aiodns"] == [out["python"]], out


def test_a_python_dns_client_asking_this_machines_name_server_gets_the_pods_answers(cluster):
    out = ok(run(cluster, "dnspython", _laptop_nameserver()))
    assert out == {"short": [out["python"]], "python": out["python"], "missing": "NXDOMAIN"}, out


def test_exit_while_c_ares_destroys_its_channel_in_a_thread(cluster):
    """pycares destroys a closed channel in a daemon thread, so c-ares' event thread may still be inside a
    hooked call when the interpreter exits. A C thread that waits for the GIL while Python finalizes is ended
    where it stands, and c-ares then freed its lists twice (an abort at exit in about one run in three here):
    the exit now waits for callbacks in progress. Several runs, since the race is one of timing."""
    codes = [run(cluster, "aiodns").code for _ in range(8)]
    assert codes == [0] * 8
