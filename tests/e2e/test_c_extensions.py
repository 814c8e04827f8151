"""C extensions doing their own networking (libpq, libcurl, grpc's core) go through the target, by the same
rules as Python's sockets: real wheels from PyPI against the sandbox's ``staging`` pods, reached by Service
names that only the pod's DNS knows. And the layer is safe: late loads, a failing hook, C-level fork, exit
while C threads are busy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sandbox import postgres

from .conftest import MIRROR_PY, ROOT, Result, sandbox_cluster

APP = str(Path(__file__).with_name("c_ext_app.py"))
MANIFESTS = (ROOT / "examples" / "k8s" / "sandbox.yaml", ROOT / "examples" / "service" / "postgres.yaml")


@pytest.fixture(scope="module")
def cluster():
    try:
        postgres.server_bin()
    except postgres.NoPostgres as exc:
        pytest.fail(f"these tests need a PostgreSQL server in the pod: {exc}")
    yield from sandbox_cluster("\n---\n".join(p.read_text() for p in MANIFESTS))


def run(cluster, scenario: str, layer: bool = True, timeout: float = 120) -> Result:
    env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=cluster.kubeconfig,
               MIRROR_PY_INTERPOSE_C_EXTENSIONS="1" if layer else "0")
    proc = subprocess.run([*MIRROR_PY, "exec", "--target", "deploy/api", "-n", "staging", "--",
                           sys.executable, APP, scenario], capture_output=True, text=True, env=env,
                          cwd=str(ROOT), timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


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
    res = run(cluster, "busy_exit", timeout=60)
    assert res.code == 0, f"exit {res.code}:\n{res.stderr}"
    assert "api" in json.loads(res.stdout.strip().splitlines()[-1])["hooked"]  # grpc's threads were routed
    assert "Fatal Python error" not in res.stderr


def test_layer_off_keeps_the_warning_and_the_laptops_network(cluster):
    res = run(cluster, "refused", layer=False)
    out = ok(res)
    assert 'could not translate host name "postgres"' in out["error"]
    assert "psycopg2 does its networking in C" in res.stderr
