"""Incoming traffic on the laptop's side, without a target: the session's helpers (the probes of a Kubernetes
container, the sockets alive in this network namespace)."""

from __future__ import annotations

import os
import socket

from mirror_py.kube.targets import probes_of
from mirror_py.session.incoming import live_inodes


# -------------------------------------------------------------------------------------------- the session
def test_probes_of_a_container_name_their_ports():
    container = {
        "name": "app", "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"port": "http", "path": "/healthz"}},
        "livenessProbe": {"tcpSocket": {"port": 9000}},
        "startupProbe": {"exec": {"command": ["true"]}},
    }
    assert probes_of(container) == [
        {"kind": "readiness", "container": "app", "handler": "httpGet", "port": 8000},
        {"kind": "liveness", "container": "app", "handler": "tcpSocket", "port": 9000},
    ]


def test_live_inodes_sees_a_listening_socket():
    with socket.create_server(("127.0.0.1", 0)) as s:
        ino = os.fstat(s.fileno()).st_ino
        assert ino in live_inodes()
    assert ino not in live_inodes()


def test_sandbox_exec_has_net_admin_only_where_a_runtime_grants_it():
    from tests.sandbox.cluster import Container, _security_wrapper

    def wrapper(security: dict | None = None, pod: dict | None = None) -> list[str]:
        spec = {"securityContext": security} if security is not None else {}
        return _security_wrapper(Container("c", spec, pod_security=pod or {}))

    assert wrapper()[-3:] == ["--bounding-set", "-net_admin,-sys_ptrace", "--"]
    assert wrapper({"allowPrivilegeEscalation": False})
    assert wrapper({"privileged": True}) == []
    assert wrapper({"capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}})[-3:] == ["--bounding-set", "-sys_ptrace",
                                                                                  "--"]
    assert wrapper({"capabilities": {"add": ["NET_ADMIN", "SYS_PTRACE"]}}) == []


def test_sandbox_runs_a_container_as_its_declared_user():
    """The container's runAsUser/runAsGroup win over the pod's, as on a real cluster; no supplementary groups."""
    from tests.sandbox.cluster import Container, _security_wrapper

    spec = {"securityContext": {"runAsUser": 1000, "capabilities": {"add": ["NET_ADMIN", "SYS_PTRACE"]}}}
    argv = _security_wrapper(Container("c", spec, pod_security={"runAsUser": 5, "runAsGroup": 7}))
    assert argv[1:] == ["--clear-groups", "--regid", "7", "--reuid", "1000", "--"]
