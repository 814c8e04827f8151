"""mysqlclient (built from PyPI's sdist against Debian's libmariadb) through mirror-py's C-level layer: a real
MariaDB from Debian's packages in a sandbox pod (examples/service/mariadb.yaml), reached by its Service name.
libmariadb resolves with ``getaddrinfo`` and connects non-blocking, waiting with ``poll``; with the layer on
both go through the target, so the server sees the target pod as its client."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.sandbox import mariadb

from .conftest import MIRROR_PY, ROOT, Result, sandbox_cluster
from .test_c_extensions import ok, pod_ip

APP = str(Path(__file__).with_name("c_mysql_app.py"))
SANDBOX = ROOT / "examples" / "k8s" / "sandbox.yaml"
WARNING = "mirror-py: warning: MySQLdb does its networking in C"


@pytest.fixture(scope="module")
def cluster():
    try:
        mariadb.server()
    except mariadb.NoMariaDB as exc:
        pytest.fail(f"these tests need a MariaDB server in the pod: {exc}")
    with tempfile.TemporaryDirectory(prefix="mirror-py-mariadb-") as files:  # not pytest's: nobody cannot enter
        os.chmod(files, 0o1777)  # the server runs as nobody
        yield from sandbox_cluster(SANDBOX.read_text() + "\n---\n" + mariadb.manifest(files))


def run(cluster, scenario: str, layer: bool = True, target: str = "deploy/api") -> Result:
    env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=cluster.kubeconfig,
               MIRROR_PY_INTERPOSE_C_EXTENSIONS="1" if layer else "0")
    proc = subprocess.run([*MIRROR_PY, "exec", "--target", target, "-n", "staging", "--",
                           sys.executable, APP, scenario], capture_output=True, text=True, env=env,
                          cwd=str(ROOT), timeout=120)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def test_query_and_transactions_by_service_name_come_from_the_pod(cluster):
    res = run(cluster, "query")
    out = ok(res)
    assert out["version"] == mariadb.version()
    assert out["host_info"] == "mariadb via TCP/IP"
    assert out["client_host"] == pod_ip(cluster, "api")  # the server accepted a connection from the target pod
    assert out["rows_after_rollback"] == 0
    assert out["sum_after_commit"] == 5050
    assert WARNING not in res.stderr  # limits.C_LAYER_COVERS is right about MySQLdb: covered, so no warning


def test_refused_connect_is_libmariadbs_own_error(cluster):
    out = ok(run(cluster, "refused"))
    # CR_CONN_HOST_ERROR with the errno the target's connect got (ECONNREFUSED), as in the pod itself.
    assert (out["code"], out["error"]) == (2002, "Can't connect to server on 'mariadb' (111)")


def test_loopback_is_the_pods_own(cluster):
    # A server on the target pod's loopback (a sidecar's place): libmariadb's connect to 127.0.0.1 reaches it.
    out = ok(run(cluster, "loopback", target="deploy/mariadb"))
    assert out == {"host_info": "127.0.0.1 via TCP/IP", "client_host": "127.0.0.1"}


def test_layer_off_keeps_the_warning_and_the_laptops_resolver(cluster):
    res = run(cluster, "refused", layer=False)
    out = ok(res)
    assert out["code"] == 2005 and "Unknown server host 'mariadb'" in out["error"]
    assert WARNING in res.stderr
