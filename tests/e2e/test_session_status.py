"""Seeing inside a session: ``session status`` (text and --json) counts what the session's processes did, by
destination and by the rule that routed it, and ``MIRROR_PY_LOG=route`` / ``-v`` has an app say each routing
decision once per destination."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from typing import Any

from .conftest import MIRROR_PY, ROOT

INCOMING_PORT = 8093  # nothing listens there in the pod: the app's listener gets it by steal

APP = f"""
import json, socket, urllib.request
for _ in range(2):  # one destination, two connections: one route line, a count of 2
    urllib.request.urlopen('http://api.pod.internal:8081/i', timeout=10).read()
srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen()
socket.create_connection(srv.getsockname(), timeout=10).close()  # this process listens there: local
try:
    socket.create_connection(('127.0.0.1', 1), timeout=10)
except ConnectionRefusedError:
    pass
open('/etc/config/app.yaml').read()
inc = socket.socket(); inc.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
inc.bind(('0.0.0.0', {INCOMING_PORT})); inc.listen()
print('READY', flush=True)
conn, _ = inc.accept(); conn.sendall(b'hi'); conn.close()
print('DONE', flush=True)
"""


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_PY_")}
    env.update(extra)
    return env


def _joined(start: subprocess.CompletedProcess, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    for line in start.stdout.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            env[name] = shlex.split(value)[0]
    return env


def _route(rows: list[dict], **want: Any) -> dict:
    found = [r for r in rows if all(r.get(k) == v for k, v in want.items())]
    assert len(found) == 1, (want, rows)
    return found[0]


def test_status_counts_what_the_session_did_and_routes_are_said_once(pod):
    base = _clean_env(PYTHONPATH=str(ROOT))
    start = subprocess.run([*MIRROR_PY, "session", "start", "--target", f"pid/{pod.pid}", "--incoming", "steal"],
                           capture_output=True, text=True, timeout=120, env=base)
    assert start.returncode == 0, start.stderr
    env = _joined(start, base)
    try:
        app = subprocess.Popen([sys.executable, "-c", APP], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=dict(env, MIRROR_PY_LOG="route"))
        assert app.stdout is not None
        assert app.stdout.readline().strip() == "READY"
        with socket.create_connection((pod.ip, INCOMING_PORT), timeout=30) as client:
            assert client.recv(10) == b"hi"
        out, err = app.communicate(timeout=60)
        assert app.returncode == 0 and "DONE" in out, err
        lines = [line for line in err.splitlines() if "\u2192" in line]
        assert "mirror-py: 127.0.0.1:8081 (api.pod.internal) \u2192 pod (outgoing default: remote)" in lines, err
        # Every connect here is by address: each is shown with the name the app resolved to it.
        refused = [line for line in lines if line.startswith("mirror-py: 127.0.0.1:1 ")]
        assert refused == ["mirror-py: 127.0.0.1:1 (api.pod.internal) \u2192 pod (outgoing default: remote)"], err
        local = [line for line in lines if line.endswith("\u2192 local (this process listens there)")]
        assert len(local) == 1 and local[0].startswith("mirror-py: 127.0.0.1:"), err
        assert len(lines) == 3, err  # once per destination, however many connections

        status = subprocess.run([*MIRROR_PY, "session", "status", "--json"], capture_output=True, text=True,
                                env=env, timeout=60)
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        c = info["counters"]
        assert (info["mode"], info["agent_mode"], c["reconnects"]) == ("daemon", "local", 0)
        assert info["target"].startswith(f"pid/{pod.pid}") and c["agent_age"] >= 0
        rows = c["connections"]
        assert _route(rows, address="127.0.0.1", port=8081)["count"] == 2
        assert _route(rows, address="127.0.0.1", port=8081)["name"] == "api.pod.internal"
        assert _route(rows, to="local")["rule"] == "this process listens there"
        assert _route(rows, port=1)["to"] == "pod"
        assert c["errors"] == {"ECONNREFUSED": 1}
        assert c["bytes"]["to_pod"] > 0 and c["bytes"]["from_pod"] > 0
        assert c["dns"]["lookups"] >= 2 and c["dns"]["cache_hits"] >= 1
        assert c["files"]["opened_for_reading"] >= 1 and c["files"]["bytes_read"] >= len("name: api\n")
        assert c["incoming"] == {"mirrored": 0, "stolen": 1, "reverse_forwarded": 0}

        text = subprocess.run([*MIRROR_PY, "session", "status"], capture_output=True, text=True, env=env,
                              timeout=60).stdout
        assert text.startswith(f"target pid/{pod.pid}")
        assert "  agent       local mode" in text and "reconnects 0" in text
        assert re.search(r"\n  connections\n  +127\.0\.0\.1:8081 \(api\.pod\.internal\) +-> pod +2  outgoing "
                         r"default: remote\n", text), text
        assert "  errors      ECONNREFUSED 1" in text
        assert "  incoming    0 mirrored, 1 stolen" in text
    finally:
        subprocess.run([*MIRROR_PY, "session", "stop"], capture_output=True, env=env, timeout=60)


def test_verbose_exec_says_the_routes(pod):
    code = "import socket; socket.create_connection(('127.0.0.1', 8081), timeout=10).close()"
    out = subprocess.run([*MIRROR_PY, "exec", "-v", "--target", f"pid/{pod.pid}", "--", sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=120, env=_clean_env(PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    assert "mirror-py: 127.0.0.1:8081 \u2192 pod (outgoing default: remote)" in out.stderr.splitlines()
