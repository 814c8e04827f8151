"""Files that C code opens by name follow ``fs.mode`` like Python's opens: libsqlite3 opening a database that
exists only in the pod, OpenSSL (Python's ``ssl`` and pycurl's bundled copy) loading the pod's CA file to
verify the pod's own HTTPS server, and a write-mode open from C staying on this machine in ``read`` mode.

The pod ``ledger`` in the sandbox's ``staging`` namespace has its files in ConfigMap and Secret volumes
(/srv/ledger, /etc/ledger-ca, /etc/ledger-tls), paths this machine does not have, so a read that stayed local
fails; it serves HTTPS on 8443 as the Service ``ledger`` with a certificate signed by that CA.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from .conftest import MIRROR_PY, ROOT, Result, sandbox_cluster

APP = str(Path(__file__).with_name("c_files_app.py"))
SANDBOX = ROOT / "examples" / "k8s" / "sandbox.yaml"
POD_ROWS = [[1, "alpha"], [2, "beta"], [3, "gamma"]]


def _database(path: Path, rows: list) -> bytes:
    conn = sqlite3.connect(path)
    conn.execute("create table entries (id integer primary key, name text)")
    conn.executemany("insert into entries values (?, ?)", rows)
    conn.commit()
    conn.close()
    return path.read_bytes()


def _manifest(tmp: Path) -> str:
    ca = trustme.CA()
    cert = ca.issue_cert("ledger", "ledger.staging", "ledger.staging.svc.cluster.local")
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    objects = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ledger-data", "namespace": "staging"},
         "binaryData": {"app.db": b64(_database(tmp / "app.db", POD_ROWS)),
                        "scratch.db": b64(_database(tmp / "scratch.db", POD_ROWS))}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ledger-ca", "namespace": "staging"},
         "data": {"ca.pem": ca.cert_pem.bytes().decode()}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ledger-tls", "namespace": "staging"},
         "data": {"cert.pem": b64(b"".join(p.bytes() for p in cert.cert_chain_pems)),
                  "key.pem": b64(cert.private_key_pem.bytes())}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ledger", "namespace": "staging"},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "ledger"}},
                  "template": {"metadata": {"labels": {"app": "ledger"}}, "spec": {
                      "containers": [{
                          "name": "ledger", "image": "python:3.12-slim",
                          "command": [sys.executable, APP, "https_server", "8443", "/etc/ledger-tls/cert.pem",
                                      "/etc/ledger-tls/key.pem"],
                          "ports": [{"name": "https", "containerPort": 8443}],
                          "readinessProbe": {"tcpSocket": {"port": "https"}},
                          "volumeMounts": [{"name": "data", "mountPath": "/srv/ledger"},
                                           {"name": "ca", "mountPath": "/etc/ledger-ca"},
                                           {"name": "tls", "mountPath": "/etc/ledger-tls"}]}],
                      "volumes": [{"name": "data", "configMap": {"name": "ledger-data"}},
                                  {"name": "ca", "configMap": {"name": "ledger-ca"}},
                                  {"name": "tls", "secret": {"secretName": "ledger-tls"}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ledger", "namespace": "staging"},
         "spec": {"selector": {"app": "ledger"}, "ports": [{"name": "https", "port": 8443, "targetPort": "https"}]}},
    ]
    return "\n---\n".join([SANDBOX.read_text(), *(json.dumps(o) for o in objects)])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    for path in ("/srv/ledger", "/etc/ledger-ca"):
        assert not os.path.exists(path), f"{path} exists on this machine: the test needs it to be the pod's only"
    yield from sandbox_cluster(_manifest(tmp_path_factory.mktemp("ledger")))


def run(cluster, scenario: str, *args: str, layer: bool = True, fs_mode: str = "read") -> Result:
    env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=cluster.kubeconfig, MIRROR_PY_FS_MODE=fs_mode,
               MIRROR_PY_INTERPOSE_C_EXTENSIONS="1" if layer else "0")
    proc = subprocess.run([*MIRROR_PY, "exec", "--target", "deploy/ledger", "-n", "staging", "--",
                           sys.executable, APP, scenario, *args], capture_output=True, text=True, env=env,
                          cwd=str(ROOT), timeout=120)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def ok(result: Result) -> dict:
    assert result.code == 0, f"exit {result.code}:\n{result.stdout}\n{result.stderr}"
    assert "error in the C-level" not in result.stderr, result.stderr
    return result.json


def test_sqlite_opens_the_pods_database_by_path_and_read_only_uri(cluster):
    out = ok(run(cluster, "sqlite_read"))
    assert out["plain"] == {"value": POD_ROWS, "error": None}
    assert out["uri"] == {"value": POD_ROWS, "error": None}
    # The layer off: libsqlite3 opens this machine's path, which does not exist.
    off = ok(run(cluster, "sqlite_read", layer=False))
    assert off["plain"]["error"] == "OperationalError: unable to open database file"
    assert off["uri"]["error"] == "OperationalError: unable to open database file"


def test_ssl_load_verify_locations_reads_the_pods_ca_and_verifies_the_pods_server(cluster):
    out = ok(run(cluster, "ssl_cafile"))
    assert out["fetch"] == {"value": "ledger over TLS\n", "error": None}
    off = ok(run(cluster, "ssl_cafile", layer=False))
    assert off["fetch"]["error"].startswith("FileNotFoundError: [Errno 2]")


def test_pycurl_cainfo_of_a_pod_path_verifies_the_pods_server(cluster):
    out = ok(run(cluster, "pycurl_cafile"))
    assert out["fetch"] == {"value": {"status": 200, "body": "ledger over TLS\n"}, "error": None}


def test_a_write_open_from_c_in_read_mode_stays_local_and_the_pods_file_is_unchanged(cluster):
    out = ok(run(cluster, "sqlite_write"))
    # The read-write open went to this machine (no /srv/ledger here); SQLite fell back to a read-only open,
    # which is the pod's: the insert is refused and the pod's database is as it was.
    assert out["write"]["error"] == "OperationalError: attempt to write a readonly database"
    assert out["rows_after"] == POD_ROWS
    assert out["after"] == out["before"]


def test_a_write_open_from_c_in_write_mode_is_written_back_to_the_pod_on_close(cluster):
    out = ok(run(cluster, "sqlite_write", fs_mode="write"))
    assert out["write"] == {"value": 4, "error": None}
    assert out["rows_after"] == [*POD_ROWS, [4, "from the laptop"]]
    assert out["after"] != out["before"]
    again = ok(run(cluster, "sqlite_read", "/srv/ledger/scratch.db"))  # a new process, read mode: the pod's file
    assert again["plain"]["value"] == [*POD_ROWS, [4, "from the laptop"]]


def test_fopen_for_writing_from_c_follows_fs_mode_and_fclose_writes_back(cluster):
    """OpenSSL's file BIO: ``fopen(path, "w")``, writes through stdio, ``fclose`` (all inside libcrypto)."""
    read_mode = ok(run(cluster, "bio_write"))
    assert read_mode == {"opened": False, "in_pod": False}  # the write stayed local: no /srv/ledger here
    write_mode = ok(run(cluster, "bio_write", fs_mode="write"))
    assert write_mode["opened"] and write_mode["written"] == 15 and write_mode["freed"] == 1
    assert (write_mode["c_read"], write_mode["python_read"]) == ("written from C\n",) * 2
