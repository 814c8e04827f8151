"""Agents on the images they really run: their own root file system, not the target's, and no iptables in the
default python:3.12-slim.

The sandbox gives ephemeral and agent-pod containers the root of their image (tests/sandbox/images.py). So an
agent that read the target's files through its own root, or used a tool that only the target's image has, fails
here as on a cluster; and a session that would steal with the default image fails at its start, saying what is
missing and which image to use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import MIRROR_PY, ROOT, STEAL_IMAGE, sandbox_cluster

PROBE = ("import json, os, shutil, sys\n"
         "path = os.environ.get('PATH', '') + ':/usr/local/sbin:/usr/sbin:/sbin'\n"
         "target = sys.argv[1]\n"
         "print(json.dumps({'own': os.path.exists('/srv/config/app.yaml'),\n"
         "                  'through_proc': open('/proc/%s/root/srv/config/app.yaml' % target).read(),\n"
         "                  'hostname': open('/etc/hostname').read().strip(),\n"
         "                  'iptables': bool(shutil.which('iptables', path=path))}))\n")


def _manifest() -> str:
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "staging"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app-config", "namespace": "staging"},
         "data": {"app.yaml": "greeting: from the target's volume\n"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app", "namespace": "staging"},
         "spec": {"containers": [{"name": "app", "image": "python:3.12-slim", "command": ["sleep", "infinity"],
                                  "volumeMounts": [{"name": "config", "mountPath": "/srv/config"}]}],
                  "volumes": [{"name": "config", "configMap": {"name": "app-config"}}]}},
    ]
    return "\n---\n".join(json.dumps(d) for d in docs)


@pytest.fixture(scope="module")
def cluster():
    yield from sandbox_cluster(_manifest())


def _env(cluster) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=cluster.kubeconfig)


def _ephemeral(cluster, name: str, image: str) -> dict:
    """Adds an ephemeral container (as kubectl debug would), waits for it, runs PROBE in it."""
    import time

    pod = cluster.store.get("pods", "staging", "app")
    added = {"name": name, "image": image, "command": ["sleep", "infinity"], "targetContainerName": "app",
             "securityContext": {"capabilities": {"add": ["SYS_PTRACE"]}}}
    cluster.add_ephemeral_containers("staging", "app", {"ephemeralContainers": [
        *(pod["spec"].get("ephemeralContainers") or []), added]})
    deadline = time.monotonic() + 30
    while cluster.runtime("app", "staging").container(name).state != "running":
        assert time.monotonic() < deadline, "the ephemeral container did not start"
        time.sleep(0.05)
    plan = cluster.plan_exec("staging", "app", name, ["python3", "-c", PROBE,
                                                      str(cluster.container_pid("app", "app", "staging"))])
    out = subprocess.run(plan.argv, env=plan.env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_an_ephemeral_container_has_its_images_root_not_the_targets(cluster):
    seen = _ephemeral(cluster, "debug-slim", "python:3.12-slim")
    assert seen == {"own": False, "through_proc": "greeting: from the target's volume\n", "hostname": "app",
                    "iptables": False}


def test_the_agent_image_has_iptables(cluster):
    assert _ephemeral(cluster, "debug-agent", STEAL_IMAGE)["iptables"] is True


def test_an_ephemeral_agent_reads_the_targets_files_through_its_process(cluster):
    """The agent serves the target's files though its own root lacks them (/proc/PID/root)."""
    app = "print(open('/srv/config/app.yaml').read().strip())"
    out = subprocess.run([*MIRROR_PY, "exec", "-n", "staging", "--target", "pod/app", "--agent-mode", "ephemeral",
                          "--incoming", "off", "--", sys.executable, "-c", app], capture_output=True, text=True,
                         timeout=120, env=_env(cluster), cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "greeting: from the target's volume"


def test_stealing_with_the_default_image_fails_at_start_and_names_the_image_to_use(cluster):
    app = "print('the app ran')"
    out = subprocess.run([*MIRROR_PY, "exec", "-n", "staging", "--target", "pod/app", "--agent-mode", "ephemeral",
                          "--incoming", "steal", "--", sys.executable, "-c", app], capture_output=True, text=True,
                         timeout=120, env=_env(cluster), cwd=str(ROOT))
    assert out.returncode != 0 and "the app ran" not in out.stdout, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    line = [line for line in out.stderr.splitlines() if "error" in line][-1]
    assert "needs an iptables command in the agent's image" in line and "python:3.12-slim (agent.image)" in line
    assert "k8s/Dockerfile.agent" in line and "--agent-image" in line and "--incoming mirror" in line, line
