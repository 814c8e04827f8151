"""Local stays local: the app's own listeners on the laptop's loopback, and names the laptop resolves.

Where it can, each test puts a server of the pod on the same loopback port, so that a connect routed to the
wrong side is seen as the wrong answer, not just as a refused connection.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.sandbox.netpod import Pod

from .conftest import MIRROR_PY, ROOT, terminate

APPS = str(Path(__file__).with_name("local_apps.py"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def pod_http(pod: Pod, port: int, label: str) -> Iterator[None]:
    """The sandbox HTTP server in the pod's loopback on ``port``, answering ``{"server": label, ...}``."""
    servers = [sys.executable, "-m", "tests.sandbox.servers"]
    env = {"PYTHONPATH": str(ROOT)}
    proc = pod.run([*servers, "http", "--pod", pod.name, "--label", label, "--bind", f"127.0.0.1:{port}"],
                   cwd=str(ROOT), extra_env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        pod.exec_output([*servers, "wait", "--timeout", "30", f"tcp:127.0.0.1:{port}"], cwd=str(ROOT),
                        extra_env=env)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("POD_ONLY", None)
    return env


# --- debugpy under mirror-py exec, a DAP client attaching ------------------------------------------------------


class Dap:
    """Just enough of a Debug Adapter Protocol client: requests, their responses, events."""

    def __init__(self, port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:  # the adapter listens once the debuggee has started it
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.buf = b""
        self.seq = 0
        self.seen: list[dict] = []

    def send(self, command: str, **arguments: object) -> int:
        self.seq += 1
        body = json.dumps({"seq": self.seq, "type": "request", "command": command, "arguments": arguments}).encode()
        self.sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return self.seq

    def _read(self) -> dict:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = int(dict(line.split(b": ", 1) for line in head.split(b"\r\n"))[b"Content-Length"])
        while len(rest) < length:
            self.buf = head + b"\r\n\r\n" + rest
            self._more()
            head, _, rest = self.buf.partition(b"\r\n\r\n")
        self.buf = rest[length:]
        message = json.loads(rest[:length])
        self.seen.append(message)
        return message

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"the adapter closed the connection; messages so far: {self.seen}")
        self.buf += chunk

    def wait(self, kind: str, name: str) -> dict:
        """The next response to ``name`` (kind "response") or event ``name`` (kind "event")."""
        key = "command" if kind == "response" else "event"
        for message in self.seen:
            if message.get("type") == kind and message.get(key) == name and not message.get("_taken"):
                message["_taken"] = True
                return message
        while True:
            message = self._read()
            if message.get("type") == kind and message.get(key) == name:
                message["_taken"] = True
                return message

    def close(self) -> None:
        self.sock.close()


def _adapters_of(port: int) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"debugpy" in a for a in argv) and str(port).encode() in argv:
            found.append(int(pid))
    return found


def test_debugpy_adapter_and_debuggee_reach_each_other(pod):
    port = _free_port()
    line = next(n for n, text in enumerate(Path(APPS).read_text().splitlines(), 1)
                if 'return {"server": body["server"]' in text)
    proc = subprocess.Popen(
        [*MIRROR_PY, "exec", "--target", f"pid/{pod.pid}", "--", sys.executable, "-m", "debugpy",
         "--listen", f"127.0.0.1:{port}", "--wait-for-client", APPS, "debuggee"],
        env=_env(), cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    dap = None
    try:
        dap = Dap(port)
        dap.send("initialize", adapterID="python", clientID="mirror-py-tests", pathFormat="path",
                 linesStartAt1=True, columnsStartAt1=True)
        assert dap.wait("response", "initialize")["success"]
        dap.send("attach", justMyCode=True)
        dap.wait("event", "initialized")
        dap.send("setBreakpoints", source={"path": APPS}, breakpoints=[{"line": line}])
        assert dap.wait("response", "setBreakpoints")["body"]["breakpoints"][0]["verified"]
        dap.send("configurationDone")
        assert dap.wait("response", "configurationDone")["success"]
        stopped = dap.wait("event", "stopped")["body"]
        assert stopped["reason"] == "breakpoint"
        dap.send("continue", threadId=stopped["threadId"])
        dap.wait("event", "terminated")
        dap.send("disconnect")
        out, err = proc.communicate(timeout=60)
    except BaseException:
        err = terminate(proc)
        raise AssertionError(f"debug session failed; mirror-py stderr:\n{err}") from None
    finally:
        if dap is not None:
            dap.close()
    assert proc.returncode == 0, err
    lines = [json.loads(t) for t in out.splitlines() if t.startswith("{")]
    assert lines == [{"server": "loopback", "pod_only": "from-the-pod"}], out + err
    deadline = time.monotonic() + 30
    while _adapters_of(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _adapters_of(port) == [], "debugpy's adapter is still running"


# --- servers of a test suite under the pytest plugin ---------------------------------------------------------


HTTPSERVER_SUITE = '''
import json, urllib.request

import pytest
import requests

PORT = {port}


@pytest.fixture(scope="session")
def httpserver_listen_address():
    return ("127.0.0.1", PORT)


def test_requests_reach_the_suites_httpserver(httpserver):
    httpserver.expect_request("/hello").respond_with_json({{"server": "httpserver"}})
    assert requests.get(httpserver.url_for("/hello"), timeout=10).json() == {{"server": "httpserver"}}
    body = json.loads(urllib.request.urlopen(f"http://localhost:{{PORT}}/hello", timeout=10).read())
    assert body == {{"server": "httpserver"}}


def test_a_pod_only_name_still_reaches_the_pod():
    body = json.loads(urllib.request.urlopen("http://api.pod.internal:8081/t", timeout=10).read())
    assert body["server"] == "loopback"
'''

AIOHTTP_SUITE = '''
import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

PORT = {port}


async def hello(request):
    return web.json_response({{"server": "aiohttp-test"}})


@pytest.fixture
def client():
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/hello", hello)
    test_client = TestClient(TestServer(app, host="127.0.0.1", port=PORT), loop=loop)
    loop.run_until_complete(test_client.start_server())
    yield loop, test_client
    loop.run_until_complete(test_client.close())
    loop.close()


def test_the_test_client_reaches_the_test_server(client):
    loop, test_client = client

    async def get():
        resp = await test_client.get("/hello")
        own = await resp.json()
        async with test_client.session.get("http://api.pod.internal:8081/t") as pod_resp:
            pod = await pod_resp.json()
        return own, pod["server"]

    assert loop.run_until_complete(get()) == ({{"server": "aiohttp-test"}}, "loopback")
'''


def _run_suite(pod: Pod, tmp_path: Path, suite: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_own_servers.py").write_text(suite)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--mirror-target", f"pid/{pod.pid}",
         str(tmp_path)],
        capture_output=True, text=True, timeout=180, env=_env(), cwd=str(tmp_path),
    )


@pytest.mark.parametrize("suite, passed", [(HTTPSERVER_SUITE, 2), (AIOHTTP_SUITE, 1)], ids=["httpserver", "aiohttp"])
def test_a_suites_own_server_answers_not_the_pods(pod, tmp_path, suite, passed):
    port = _free_port()
    with pod_http(pod, port, "pod-on-the-same-port"):
        out = _run_suite(pod, tmp_path, suite.format(port=port))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{passed} passed" in out.stdout, out.stdout


# --- names the laptop resolves -------------------------------------------------------------------------------


class _LaptopHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        data = json.dumps({"server": "laptop"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def laptop_and_pod_server(pod):
    """An HTTP server of the laptop (not of the app's session) and one of the pod on the same 127.0.0.1 port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LaptopHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        with pod_http(pod, port, "pod"):
            yield port
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("client", ["requests", "urllib3", "asyncio", "socket"])
def test_a_name_resolved_on_the_laptop_connects_on_the_laptop(pod, tmp_path, laptop_and_pod_server, client):
    port = laptop_and_pod_server
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 svc.corp.example\n")
    config = tmp_path / "mirror-py.toml"
    config.write_text('[network.outgoing.filter]\nlocal = ["*.corp.example"]\n\n'
                      '[network.dns.filter]\nlocal = ["*.corp.example"]\n')
    # Only the app's mount namespace sees svc.corp.example (the pod does not know the name at all).
    app = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts),
           sys.executable, APPS, "names", client, f"http://svc.corp.example:{port}/x"]
    proc = subprocess.run([*MIRROR_PY, "exec", "--config", str(config), "--target", f"pid/{pod.pid}", "--", *app],
                          capture_output=True, text=True, timeout=120, env=_env(), cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(t) for t in proc.stdout.splitlines() if t.startswith("{")]
    assert lines == [{"server": "laptop", "peer": "127.0.0.1"}], proc.stdout + proc.stderr


# --- whose listener wins on a port both the laptop and the pod's loopback serve -----------------------------


def _exec_app(pod: Pod, tmp_path: Path, mode: str | None, *app: str) -> dict:
    extra = []
    if mode is not None:
        config = tmp_path / "mirror-py.toml"
        config.write_text(f'[network.outgoing]\nlocal_listeners = "{mode}"\n')
        extra = ["--config", str(config)]
    proc = subprocess.run([*MIRROR_PY, "exec", *extra, "--target", f"pid/{pod.pid}", "--", sys.executable, APPS, *app],
                          capture_output=True, text=True, timeout=120, env=_env(), cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode, expected", [(None, "pod"), ("session", "pod"), ("laptop", "laptop"), ("none", "pod")])
def test_someone_elses_laptop_listener_wins_only_in_laptop_mode(pod, tmp_path, laptop_and_pod_server, mode, expected):
    port = laptop_and_pod_server
    out = _exec_app(pod, tmp_path, mode, "names", "socket", f"http://127.0.0.1:{port}/x")
    assert out["server"] == expected


@pytest.mark.parametrize("mode, expected", [(None, "own"), ("laptop", "own"), ("none", "pod")])
def test_the_apps_own_listener_wins_unless_none(pod, tmp_path, mode, expected):
    port = _free_port()
    with pod_http(pod, port, "pod"):
        out = _exec_app(pod, tmp_path, mode, "own", str(port))
    assert out["server"] == expected
