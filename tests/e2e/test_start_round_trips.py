"""A session's start, counted at the sandbox API server: which requests it makes and on which connections.

At a distance each sequential step costs a round trip, so the start keeps them few: the target lookups are one
read of the named object and one list of its pods (a pod target: one read), and the exec stream's connection
(TCP and TLS) is opened while those lookups run, so that its upgrade is the only round trip it adds. Counted,
not timed: the server numbers connections in the order it accepted them (TLS done).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import MIRROR_PY, ROOT, sandbox_cluster

MANIFEST_TEXT = (ROOT / "examples" / "k8s" / "sandbox.yaml").read_text()


@pytest.fixture(scope="module")
def cluster():
    yield from sandbox_cluster(MANIFEST_TEXT)


def _start(cluster, target: str, *options: str) -> list:
    """The API calls one ``mirror-py exec`` made, from start to end."""
    cluster.clear_calls()
    env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=cluster.kubeconfig)
    out = subprocess.run([*MIRROR_PY, "exec", "--target", target, "-n", "staging", *options, "--", sys.executable,
                          "-c", "print('started')"], capture_output=True, text=True, timeout=120, env=env,
                         cwd=str(ROOT))
    assert out.returncode == 0 and out.stdout.strip() == "started", out.stderr
    return cluster.calls


@pytest.mark.parametrize("kind, lookups", [("deploy/api", ["deployments", "pods"]), ("svc/api", ["services", "pods"]),
                                           ("pod", ["pods"])])
def test_a_start_makes_its_lookups_and_one_upgrade_on_two_connections(cluster, kind, lookups):
    target = f"pod/{cluster.pod_names('staging', 'api-')[0]}" if kind == "pod" else kind
    calls = _start(cluster, target)
    assert [c.resource for c in calls] == [*lookups, "pods/exec"], [(c.method, c.path) for c in calls]
    *lookup_calls, upgrade = calls
    assert upgrade.path.endswith("/exec") and upgrade.code == 101
    # Two connections: the lookups share one, the exec stream has its own...
    assert len({c.connection for c in lookup_calls}) == 1
    assert upgrade.connection not in {c.connection for c in lookup_calls}
    # ... which was already open (TCP and TLS done) before the lookups ended. Its connect went out before the
    # first lookup's; the lookups' connection then has its TLS and a whole request to do before the last one.
    if len(lookup_calls) > 1:
        assert upgrade.connection <= lookup_calls[-1].connections, (
            f"the exec stream's connection #{upgrade.connection} was opened after the lookups ended "
            f"({lookup_calls[-1].connections} connection(s) accepted by then)")


def test_the_ephemeral_agent_is_added_right_after_the_lookups(cluster):
    """The pod list already holds the target pod's spec, which is all the ephemeral container's security
    context is made from: no second read of the pod comes between the lookups and the PATCH that adds it."""
    calls = _start(cluster, "deploy/api", "--agent-mode", "ephemeral")
    assert [(c.method, c.resource) for c in calls[:3]] == [
        ("GET", "deployments"), ("GET", "pods"), ("PATCH", "pods/ephemeralcontainers")], [
        (c.method, c.path) for c in calls]
