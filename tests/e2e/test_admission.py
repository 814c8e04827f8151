"""Agents under the cluster's admission policies: Pod Security levels and ResourceQuotas.

The sandbox's API server refuses pods and ephemeral containers as a real one does (tests/sandbox/admission.py),
and a Job whose pod is refused only records FailedCreate events. mirror-py must declare what a quota requires,
and when a policy refuses an agent anyway, say which policy and what to change, at once, not after its start-up
timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import MIRROR_PY, ROOT, config_args, sandbox_cluster

APP = "import socket; print(socket.gethostname())"
TARGET = {"name": "app", "image": "python:3.12-slim", "command": ["sleep", "infinity"]}


def _manifest() -> str:
    limits = {"limits": {"cpu": "100m", "memory": "64Mi"}, "requests": {"cpu": "10m", "memory": "16Mi"}}
    docs = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": "guarded", "labels": {"pod-security.kubernetes.io/enforce": "baseline"}}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "metered"}},
        {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "compute", "namespace": "metered"},
         "spec": {"hard": {"limits.cpu": "4", "limits.memory": "4Gi"}}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app", "namespace": "guarded"},
         "spec": {"securityContext": {"runAsUser": 1000, "runAsGroup": 1000}, "containers": [TARGET]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app", "namespace": "metered"},
         "spec": {"containers": [{**TARGET, "resources": limits}]}},
    ]
    return "\n---\n".join(json.dumps(d) for d in docs)


@pytest.fixture(scope="module")
def cluster():
    yield from sandbox_cluster(_manifest())


def _run(cluster, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=cluster.kubeconfig)
    return subprocess.run([*MIRROR_PY, "exec", "--agent-startup-timeout", "20", *args, "--", sys.executable, "-c",
                           APP], capture_output=True, text=True, timeout=120, env=env, cwd=str(ROOT))


def _one_error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    assert lines, out.stderr
    return lines[-1]


def test_a_job_pod_refused_by_pod_security_names_the_level_from_the_jobs_events(cluster):
    line = _one_error_line(_run(cluster, "-n", "guarded", "--target", "pod/app", "--agent-mode", "job"))
    assert 'Pod Security level "baseline" of namespace guarded' in line, line
    assert 'violates PodSecurity "baseline:latest": host namespaces (hostPID=true), privileged (container ' \
           '"agent" must not set securityContext.privileged=true)' in line, line
    assert "--agent-mode ephemeral" in line and "did not start within" not in line, line
    assert not cluster.store.list("jobs", "guarded"), "the refused agent job was left behind"


def test_an_ephemeral_container_refused_by_pod_security_names_the_level(cluster):
    line = _one_error_line(_run(cluster, "-n", "guarded", "--target", "pod/app", "--agent-mode", "ephemeral"))
    assert 'Pod Security level "baseline" of namespace guarded' in line, line
    assert 'non-default capabilities (container "mirror-py-' in line and '"NET_RAW"' in line, line
    assert "--incoming off" in line and "pods/ephemeralcontainers" not in line, line


def test_an_ephemeral_container_without_capabilities_is_admitted_at_baseline(cluster):
    """The way out the message above gives works: the target declares its user, incoming is off."""
    out = _run(cluster, "-n", "guarded", "--target", "pod/app", "--agent-mode", "ephemeral", "--incoming", "off")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "app"


def test_a_job_pod_declares_the_limits_a_quota_requires(cluster):
    out = _run(cluster, "-n", "metered", "--target", "pod/app", "--agent-mode", "job")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "app"


def test_a_targetless_pod_declares_the_limits_a_quota_requires(cluster):
    out = _run(cluster, "--agent-namespace", "metered")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1].startswith("mirror-py-")


def test_a_targetless_pod_refused_by_a_quota_names_the_quota_and_the_key(cluster, tmp_path):
    line = _one_error_line(_run(cluster, *config_args(tmp_path, "agent", memory_limit=""),
                                "--agent-namespace", "metered"))
    assert "ResourceQuota compute of namespace metered" in line, line
    assert "failed quota: compute: must specify limits.memory for: agent" in line and "agent.memory_limit" in line, line
