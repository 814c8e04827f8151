"""The core scenarios under every Python mirror-py supports: the client (CLI, session and the app's shim) under
each client Python with the default agent, and the agent under each target Python with the default client.

Interpreters come from the machine (tests/pythons.py); a version the machine lacks is skipped, saying how to get
it. The client runs from a venv of its own version with mirror-py installed from this checkout
(tests/client_venvs.py), not from this test run's venv, and from a directory outside the checkout, so what
runs is what ``pip install`` gives a user of that version.
"""

from __future__ import annotations

import http.client
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests import client_venvs, pythons
from tests.sandbox.netpod import HTTP_PODIP_PORT, Pod

from .conftest import MIRROR_PY, Result, run_mirror, terminate

CORE_PROBE = str(Path(__file__).with_name("core_probe.py"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def run_core(pod: Pod, client: list[str], app_python: str, tmp_path: Path, extra: list[str] = ()) -> Result:
    """Runs core_probe.py under ``mirror-py exec`` (``client`` is how mirror-py is started), sends the pod's
    port a request once the app listens, and returns the run's outcome."""
    port = _free_port()
    conf = tmp_path / "mirror-py.toml"
    conf.write_text(f'[network.incoming]\nmode = "mirror"\nport_mapping = [[{port}, {HTTP_PODIP_PORT}]]\n')
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.Popen(
        [*client, "exec", "-v", "--target", f"pid/{pod.pid}", "--config", str(conf), *extra, "--",
         app_python, CORE_PROBE, str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path),
        start_new_session=True,
    )
    out: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, out), daemon=True).start()
    stdout: list[str] = []
    try:
        deadline = time.monotonic() + 120
        listening = False
        while time.monotonic() < deadline:
            try:
                line = out.get(timeout=0.5 if listening else 5)
            except queue.Empty:
                if listening:  # the copy may need the capture to be in place: ask again
                    _ask_pod(pod)
                continue
            if line is None:
                break
            stdout.append(line)
            if line.strip() == "READY":
                listening = True
                _ask_pod(pod)
    finally:
        stderr = terminate(proc)
    return Result(proc.returncode, "".join(stdout), stderr)


def _ask_pod(pod: Pod) -> None:
    """A client of the pod's service: the pod's own server answers, mirror-py copies it to the app."""
    conn = http.client.HTTPConnection(pod.ip, HTTP_PODIP_PORT, timeout=10)
    try:
        conn.request("GET", "/core-incoming")
        assert conn.getresponse().read()
    finally:
        conn.close()


def check_core(res: Result, pod: Pod) -> dict:
    assert res.code == 0, f"exit {res.code}: {res.stderr[-4000:]}"
    got = res.json
    assert got["dns"] == ["127.0.0.1"], got
    http_answer = got["http"]
    assert (http_answer["server"], http_answer["pod"], http_answer["path"]) == ("loopback", "api", "/core"), got
    assert got["udp"] == {"data": "echo:ping", "peer": ["127.0.0.1", 9998]}, got
    assert got["env"] == "from-the-pod", got
    assert got["file"] == got["pathlib"] == "hosts: files\n", got
    assert got["glob"] == ["/etc/config/app.yaml"] * 2, got
    assert got["hostname"] == "api-7d9f", got
    assert got["incoming"] == {"request": "GET /core-incoming HTTP/1.1", "sockname": [pod.ip, HTTP_PODIP_PORT]}, got
    return got


def _interpreter(version: str) -> str:
    found = pythons.find(version)
    if found is None:
        pytest.skip(pythons.missing_reason(version))
    return found


@pytest.mark.parametrize("version", pythons.CLIENT_VERSIONS)
def test_client_under_each_python(version: str, pod: Pod, tmp_path: Path):
    venv = client_venvs.client_venv(_interpreter(version), version)
    python = str(client_venvs.python_in(venv))
    res = run_core(pod, [python, "-m", "mirror_py"], python, tmp_path)
    assert check_core(res, pod)["python"] == version


@pytest.mark.parametrize("version", pythons.AGENT_VERSIONS)
def test_agent_under_each_python(version: str, pod: Pod, tmp_path: Path):
    agent_python = _interpreter(version)
    res = run_core(pod, MIRROR_PY, sys.executable, tmp_path, ["--agent-python", agent_python])
    check_core(res, pod)
    assert f"(python {version}." in res.stderr, res.stderr[-2000:]


def test_agent_under_an_older_python_fails_in_one_line(pod: Pod, tmp_path: Path):
    """A target whose python3 is older than the agent supports: the session ends with one line that names
    both versions."""
    agent_python = _interpreter("3.8")
    res = run_mirror(f"pid/{pod.pid}", [sys.executable, "-c", "print('ran')"], extra=["--agent-python", agent_python],
                     timeout=60, cwd=str(tmp_path))
    assert res.code != 0 and "ran" not in res.stdout
    assert res.stderr.strip().splitlines() == [
        f"mirror-py: error: the agent for pid/{pod.pid} exited during start-up (exit code 1) (it said: mirror-py "
        f"agent: {agent_python} is Python 3.8; the agent needs Python 3.9 or newer)"]
