"""The shim talks only to a session of its own user: a socket another user put at the session's path is refused
before a byte is sent."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

import pytest

NOBODY = 65534
CLIENT = r"""
import sys
from mirror_py.shim import rpc
try:
    rpc.call({"op": "info"})
except rpc.SessionUnavailable as exc:
    print("refused:", exc)
else:
    print("answered")
"""


def _foreign_server(path: str) -> tuple[socket.socket, list[bytes]]:
    """A listening socket created by user nobody (the process that took over a dead session's path)."""
    received: list[bytes] = []
    parent, child = socket.socketpair()
    parent.settimeout(10)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            srv.bind(path)
            srv.listen()
            socket.send_fds(child, [b"x"], [srv.fileno()])
        finally:
            os._exit(0)
    child.close()
    os.waitpid(pid, 0)
    _, fds, _, _ = socket.recv_fds(parent, 1, 1)
    assert fds, "user nobody could not create the socket"
    srv = socket.socket(fileno=fds[0])  # the socket stays nobody's: its credentials are those of its creator

    def serve() -> None:
        conn, _ = srv.accept()
        conn.settimeout(3)
        try:
            received.append(conn.recv(65536))
            conn.sendall(b"\0\0\0\x0a{\"ok\": {}}")
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()
    return srv, received


def test_a_socket_of_another_user_is_not_answered():
    if os.geteuid() != 0:
        pytest.fail("this test creates a socket as another user and must run as root")
    shared = tempfile.mkdtemp(prefix="mirror-py-test-owner-")  # in /tmp, which every user can reach
    os.chmod(shared, 0o777)
    path = os.path.join(shared, "session.sock")
    srv, received = _foreign_server(path)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, MIRROR_PY_SESSION=path, PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", CLIENT], capture_output=True, text=True, env=env, timeout=30)
    srv.close()
    shutil.rmtree(shared)
    assert out.stdout.startswith(f"refused: [Errno 13] mirror-py: the session socket {path} is held by user "
                                 f"{NOBODY}, not by you (0)"), out.stdout + out.stderr
    assert received in ([], [b""])  # nothing of the app reached it


ENDED = r"""
from mirror_py.shim import rpc
print(rpc.call({"op": "info"}))
input()  # the test stops the session now
try:
    rpc.call({"op": "info"})
except rpc.SessionUnavailable as exc:
    print("unavailable:", exc)
except OSError as exc:
    print("other:", type(exc).__name__, exc)
"""


def test_a_session_that_ended_is_named_not_a_broken_pipe(tmp_path):
    path = str(tmp_path / "session.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, MIRROR_PY_SESSION=path, PYTHONPATH=root)
    app = subprocess.Popen([sys.executable, "-c", ENDED], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                           env=env)
    conn, _ = srv.accept()
    conn.recv(65536)
    conn.sendall(b"\0\0\0\x0a{\"ok\": {}}")
    assert app.stdout.readline().strip() == "{'ok': {}}"
    conn.close()
    srv.close()
    out, _ = app.communicate("\n", timeout=30)
    assert out.startswith("unavailable: [Errno 32] mirror-py: the session ended (Broken pipe); was it stopped?"), out
