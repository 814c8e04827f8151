"""A sandbox pod with real servers, a helper that runs probes natively in it or through mirror-py, and what the
sandbox-cluster modules share (their cluster fixture's body, stopping an app under mirror-py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.sandbox.cluster import Cluster
from tests.sandbox.netpod import Network, Pod, PodSpec

ROOT = Path(__file__).resolve().parents[2]
PROBE = str(Path(__file__).with_name("probe.py"))
MIRROR_PY = [sys.executable, "-m", "mirror_py"]
# An agent image with iptables, as built from k8s/Dockerfile.agent (the sandbox gives it a root with iptables;
# the default python:3.12-slim has none, so stealing needs this one: tests/sandbox/images.py).
STEAL_IMAGE = "registry.example/mirror-py-agent:1"

POD_ENV = {
    "DATABASE_URL": "postgres://db.pod.internal/app",
    "POD_ONLY": "from-the-pod",
    "SECRET_TOKEN": "s3cr3t",
    "HOME": "/pod-home",
    "PYTHONPATH": "/pod/python",
}
POD_HOSTS = {"secure.pod.internal": "127.0.0.1", "api.pod.internal": "127.0.0.1"}


@pytest.fixture(scope="session")
def network():
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests build namespaces and must run as root")
    with Network.create() as net:
        yield net


@pytest.fixture(scope="session")
def pod(network: Network) -> Pod:
    return network.add_pod(
        PodSpec(
            name="api",
            env=POD_ENV,
            hosts=POD_HOSTS,
            hostname="api-7d9f",
            # Name lookups from files only: an unknown name fails at once with EAI_NONAME, as with a pod
            # whose cluster DNS answers NXDOMAIN.
            files={"/etc/nsswitch.conf": "hosts: files\n", "/etc/config/app.yaml": "name: api\n"},
            servers=True,
        )
    )


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict:
        lines = [line for line in self.stdout.splitlines() if line.startswith("{")]
        assert lines, f"no JSON on stdout (exit {self.code}); stderr:\n{self.stderr}"
        return json.loads(lines[-1])


def run_mirror(target: str, argv: list[str], *, extra: list[str] | None = None, env: dict | None = None,
               timeout: float = 120, cwd: str | None = None) -> Result:
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), full_env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [*MIRROR_PY, "exec", "--target", target, *(extra or []), "--", *argv],
        capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd or str(ROOT),
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def through(pod: Pod):
    """Runs a probe from the host through mirror-py with the pod as target."""

    def run(name: str, *args: str, extra: list[str] | None = None, env: dict | None = None) -> dict:
        res = run_mirror(f"pid/{pod.pid}", [sys.executable, PROBE, name, *args], extra=extra, env=env)
        assert res.code == 0, f"mirror-py exited {res.code}: {res.stderr}"
        return res.json

    return run


@pytest.fixture
def native(pod: Pod):
    """Runs the same probe inside the pod itself: what the app would see if it were deployed there."""

    def run(name: str, *args: str) -> dict:
        out = pod.exec_output([sys.executable, PROBE, name, *args])
        return json.loads(out.strip().splitlines()[-1])

    return run


def sandbox_cluster(manifest: Any, **options: Any) -> Iterator[Cluster]:
    """The body of a module's ``cluster`` fixture (``yield from sandbox_cluster(MANIFEST)``): a module that
    replaces pods or restarts the API server must not share its cluster with the others."""
    if os.geteuid() != 0:
        pytest.fail("the sandbox cluster builds namespaces and must run as root")
    with Cluster.start(manifest, **options) as c:
        yield c


def terminate(proc: subprocess.Popen, timeout: float = 30) -> str:
    """SIGTERM to a ``mirror-py exec`` started with ``start_new_session`` (SIGKILL to its group if it hangs);
    its stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    return err


def agent_of(session_pid: int) -> int:
    """The agent a local-target session started: its child running the bootstrap (``python3 -I -c``)."""
    with open(f"/proc/{session_pid}/task/{session_pid}/children") as f:
        for child in f.read().split():
            with open(f"/proc/{child}/cmdline", "rb") as c:
                if b"-I" in c.read().split(b"\0"):
                    return int(child)
    raise AssertionError(f"no agent under session {session_pid}")


def config_args(tmp_path: Path, section: str, **keys: object) -> list[str]:
    """``--config FILE`` for a file that sets ``keys`` in ``[section]`` (values written as JSON, which TOML reads)."""
    lines = [f"[{section}]"] + [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    path = tmp_path / "mirror-py.toml"
    path.write_text("\n".join(lines) + "\n")
    return ["--config", str(path)]
