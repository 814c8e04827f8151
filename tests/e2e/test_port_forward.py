"""``mirror-py port-forward`` against the sandbox cluster, with the clients people use: Debian's psql and
redis-cli reach the PostgreSQL and Redis pods through the target's agent, and a client in the target reaches a
server on this machine through --reverse."""

from __future__ import annotations

import json
import os
import re
import selectors
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.sandbox import postgres

from .backends import SandboxBackend
from .conftest import MIRROR_PY, ROOT, sandbox_cluster, terminate
from .ptys import run_on_pty

MANIFEST = "\n---\n".join(p.read_text() for p in (ROOT / "examples" / "k8s" / "sandbox.yaml",
                                                  ROOT / "examples" / "service" / "postgres.yaml"))
FORWARDING = re.compile(r"^forwarding (\S+):(\d+) ")


@pytest.fixture(scope="module")
def cluster():
    try:
        postgres.server_bin()
    except postgres.NoPostgres as exc:
        pytest.fail(f"the PostgreSQL pod needs a server: {exc}")
    yield from sandbox_cluster(MANIFEST)


def _env(cluster: Any, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_PY_")}
    env.update(PYTHONPATH=str(ROOT), KUBECONFIG=cluster.kubeconfig, **extra)
    return env


class Forward:
    """A running ``mirror-py port-forward``: its listening ports in the order of its specs."""

    def __init__(self, args: list[str], env: dict[str, str], count: int) -> None:
        self.proc = subprocess.Popen([*MIRROR_PY, "port-forward", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        self.ports: list[int] = []
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()  # read raw: a buffered readline would hide a second line from select
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + 120  # a bound on a hang, not a measurement
        got = b""
        while len(self.ports) < count and time.monotonic() < deadline:
            if not sel.select(timeout=1.0):
                if self.proc.poll() is not None:
                    break
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            got += chunk
            self.ports = [int(m.group(2)) for m in map(FORWARDING.match, got.decode().splitlines()) if m]
        sel.close()
        if len(self.ports) < count:
            err = terminate(self.proc)
            raise AssertionError(f"port-forward did not start (exit {self.proc.returncode}): {err}")

    def stop(self) -> str:
        return terminate(self.proc)


@pytest.fixture
def forwards() -> Iterator[list[Forward]]:
    started: list[Forward] = []
    yield started
    for fwd in started:
        fwd.stop()


def _pod_ip(cluster: Any, prefix: str) -> str:
    backend = SandboxBackend(cluster)
    return backend.pod_ip(backend.pod_names(prefix)[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_psql_and_redis_cli_reach_the_pods_through_the_agent(cluster, forwards):
    fwd = Forward(["--target", "deploy/api", ":postgres:5432", "0:redis:6379"], _env(cluster), 2)
    forwards.append(fwd)
    pg, redis = fwd.ports
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(pg), "-U", "app", "-d", "postgres", "-Atc",
                          "select host(inet_server_addr()), current_user"],
                         capture_output=True, text=True, timeout=60, env=dict(os.environ, PGCONNECT_TIMEOUT="30"))
    assert out.returncode == 0, out.stderr
    # The server saw the connection arrive on its pod address: the agent resolved "postgres" in the pod.
    assert out.stdout.strip() == f"{_pod_ip(cluster, 'postgres-')}|app"
    key = f"pf-{os.getpid()}"
    out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(redis), "set", key, "through-the-pod"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "OK", out.stderr
    redis_pod = cluster.pod(SandboxBackend(cluster).pod_names("redis-")[0], cluster.namespace)
    assert redis_pod.exec_output(["redis-cli", "get", key]).strip() == "through-the-pod"
    err = fwd.stop()
    assert "Traceback" not in err, err


def test_a_running_session_for_the_target_is_shared(cluster, forwards):
    env = _env(cluster)
    start = subprocess.run([*MIRROR_PY, "session", "start", "--target", "deploy/api"], capture_output=True,
                           text=True, timeout=120, env=env)
    assert start.returncode == 0, start.stderr
    joined = dict(env)
    for line in start.stdout.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            joined[name] = shlex.split(value)[0]
    try:
        cluster.clear_calls()
        # Another shell: nothing names the session there, it is found by its target.
        fwd = Forward(["--target", "deploy/api", "0:redis:6379"], env, 1)
        forwards.append(fwd)
        out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(fwd.ports[0]), "ping"],
                             capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "PONG", out.stderr
        assert not [c for c in cluster.calls if c.resource.startswith("pods")], "a second agent was started"
        status = subprocess.run([*MIRROR_PY, "session", "status", "--json"], capture_output=True, text=True,
                                env=joined, timeout=60)
        info = json.loads(status.stdout)
        api = SandboxBackend(cluster).pod_names("api-")[0]
        assert info["pod"] == {"namespace": "staging", "name": api, "container": "app"}
        assert info["agent_mode"] == "exec"
        # The forwarded connection is counted with the session's own, under the forward that sent it.
        assert [(r["name"], r["port"], r["to"], r["rule"], r["count"]) for r in info["counters"]["connections"]] \
            == [("redis", 6379, "pod", f"port-forward 127.0.0.1:{fwd.ports[0]} -> redis:6379", 1)]
    finally:
        stop = subprocess.run([*MIRROR_PY, "session", "stop"], capture_output=True, text=True, env=joined)
    assert stop.returncode == 0, stop.stderr
    # With its session gone, the forward says so in one line and ends.
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(fwd.ports[0]), "ping"], capture_output=True,
                   timeout=60)
    _, err = fwd.proc.communicate(timeout=60)
    assert fwd.proc.returncode == 1
    assert "using the running session for" in err
    assert err.strip().splitlines()[-1].startswith("mirror-py: error: the session"), err


def test_reverse_brings_a_pod_side_client_to_this_machine(cluster, forwards):
    port = _free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        fwd = Forward(["--target", "deploy/api", "--reverse", f"0:localhost:{port}"], _env(cluster), 1)
        forwards.append(fwd)
        api = cluster.pod(SandboxBackend(cluster).pod_names("api-")[0], cluster.namespace)
        out = api.exec_output(["redis-cli", "-p", str(fwd.ports[0]), "set", "from-the-pod", "yes"])
        assert out.strip() == "OK"
        here = subprocess.run(["redis-cli", "-p", str(port), "get", "from-the-pod"], capture_output=True,
                              text=True, timeout=60)
        assert here.stdout.strip() == "yes"
        err = fwd.stop()
        assert "Traceback" not in err, err
        # The port in the target is closed again.
        probe = api.run([sys.executable, "-c", "import socket, sys; s = socket.socket(); "
                         f"sys.exit(s.connect_ex(('127.0.0.1', {fwd.ports[0]})))"])
        assert probe.wait(timeout=60) != 0
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_taken_local_port_is_one_line(cluster):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([*MIRROR_PY, "port-forward", "--target", "deploy/api", f"{port}:redis:6379"],
                             capture_output=True, text=True, timeout=120, env=_env(cluster))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"mirror-py: error: cannot listen on 127.0.0.1:{port} on this machine: address already in use")
    assert "Traceback" not in out.stderr


def test_start_up_steps_share_one_terminal_line_until_the_forwards_are_listed(cluster):
    env = _env(cluster, TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    code, out = run_on_pty([*MIRROR_PY, "port-forward", "--target", "deploy/api", "0:redis:6379"], env,
                           until=b" in the target\r\n")
    assert code == 0, out
    ready = out.index(b"mirror-py: agent ready in pod staging/api-")
    steps = out[:ready]
    assert steps.startswith(b"\r\x1b[Kmirror-py: target deployment/api: pod staging/api-"), out
    assert b"\r\x1b[Kmirror-py: streaming the agent to pod staging/api-" in steps and b"\n" not in steps, out
    assert out[ready:].split(b"\r\n")[1].startswith(b"forwarding 127.0.0.1:"), out
