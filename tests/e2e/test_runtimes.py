"""A job agent enters its target's own namespaces whatever runtime runs it: containerd, CRI-O (with its conmon
monitor next to the container, carrying the container's ID in its cgroup's name and started first), Docker;
cgroup v2 and v1; the systemd and cgroupfs drivers.

Each pod below runs under one sandbox runtime layout (tests/sandbox/runtimes.py). The app asks for the host
name and an environment variable of the target: an agent that entered the monitor (a host process) instead
answers with the node's host name and the node's environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.sandbox import runtimes

from .conftest import MIRROR_PY, ROOT, sandbox_cluster

APP = "import json, os, socket\nprint(json.dumps([socket.gethostname(), os.environ.get('WHO')]))\n"


def _manifest() -> str:
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "staging"}}]
    for name in runtimes.LAYOUTS:
        docs.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"on-{name}", "namespace": "staging",
                                  "annotations": {runtimes.ANNOTATION: name}},
                     "spec": {"containers": [{"name": "app", "image": "busybox", "command": ["sleep", "infinity"],
                                              "env": [{"name": "WHO", "value": f"the {name} container"}]}]}})
    return "\n---\n".join(json.dumps(d) for d in docs)


@pytest.fixture(scope="module")
def cluster():
    yield from sandbox_cluster(_manifest())


@pytest.mark.parametrize("layout", sorted(runtimes.LAYOUTS))
def test_job_agent_enters_the_container_not_its_monitor(cluster, layout):
    pod = f"on-{layout}"
    status = cluster.store.get("pods", "staging", pod)["status"]["containerStatuses"][0]
    assert status["containerID"].startswith(runtimes.LAYOUTS[layout].scheme + "://")
    env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=cluster.kubeconfig)
    out = subprocess.run([*MIRROR_PY, "exec", "--target", f"pod/{pod}", "-n", "staging", "--agent-mode", "job",
                          "--", sys.executable, "-c", APP], capture_output=True, text=True, timeout=120, env=env,
                         cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [pod, f"the {layout} container"]


def test_the_sandbox_runs_conmon_first_and_as_the_containers_parent(cluster):
    """The layout the test above relies on: on CRI-O the container's init is the child of a monitor in the
    node's namespaces, whose cgroup is named after the same ID and whose PID is lower."""
    pid = cluster.container_pid("on-cri-o-v1", "app", "staging")
    cid = cluster.runtime("on-cri-o-v1", "staging").containers["app"].id
    with open(f"/proc/{pid}/stat") as f:
        parent = int(f.read().rsplit(")", 1)[1].split()[1])
    with open(f"/proc/{parent}/cgroup") as f:
        assert f"crio-conmon-{cid}.scope" in f.read()
    with open(f"/proc/{pid}/cgroup") as f:
        assert any(line.split(":", 2)[1] and line.endswith(f"/crio-{cid}.scope") for line in f.read().splitlines())
    assert parent < pid
    assert os.readlink(f"/proc/{parent}/ns/net") == os.readlink("/proc/self/ns/net")
