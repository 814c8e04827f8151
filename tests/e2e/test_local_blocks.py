"""Local blocks keep the session's state, and ending a session undoes everything whatever was installed.

Each way in has its local block: ``MirrorSession.local()`` (``mirror_py.connect()``), ``mirror.local()`` (the
pytest plugin) and ``%%mirror_local`` (IPython). Inside one, new connections, lookups, file opens and listeners
of the calling thread or task are this machine's; what was opened before — a remote file being written, a
relayed socket — keeps the pod's view inside and after the block, and other threads and tasks stay in the pod.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.e2e.conftest import POD_ENV, POD_HOSTS, ROOT
from tests.sandbox.netpod import TCP_ECHO_PORT, Network, Pod, PodSpec

DATA = "/srv/local-blocks"


@pytest.fixture(scope="module")
def lpod(network: Network) -> Pod:
    """A pod with the standard servers and a directory of its own to write into (absent on the host)."""
    pod = network.add_pod(PodSpec(name="local-blocks", env=POD_ENV, hosts=POD_HOSTS, hostname="blocks-3f1a",
                                  files={"/etc/nsswitch.conf": "hosts: files\n", f"{DATA}/.keep": ""},
                                  servers=True))
    yield pod
    pod.close()


def _config(tmp_path: Path, mode: str) -> str:
    path = tmp_path / "mirror-py.toml"
    path.write_text(f'[fs]\nmode = "{mode}"\n')
    return str(path)


def _run(script: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("POD_ONLY", None)
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120,
                         env=env, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _pod_file(pod: Pod, name: str) -> str:
    return pod.exec_output(["cat", f"{DATA}/{name}"])


# ------------------------------------------------------------------------------------- MirrorSession.local()
STATE = r"""
import json, os, socket, sys
import mirror_py

target, config, data, echo = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
out = {}
with mirror_py.connect(target, config=config) as session:
    closed_by_app = open(data + "/closed.txt", "w")
    left_open = open(data + "/left-open.txt", "w")
    raw_fd = os.open(data + "/raw.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    for f in (closed_by_app, left_open):
        f.write("before\n")
    os.write(raw_fd, b"before\n")
    relayed = socket.create_connection(("127.0.0.1", echo), timeout=10)
    out["peer_before"] = list(relayed.getpeername())
    with session.local():
        for f in (closed_by_app, left_open):
            f.write("inside\n")
        os.write(raw_fd, b"inside\n")
        out["peer_inside"] = list(relayed.getpeername())
        relayed.sendall(b"ping")
        out["echo_inside"] = relayed.recv(16).decode()
        try:  # a new open is this machine's, which has no such directory
            open(data + "/closed.txt")
            out["open_inside"] = "opened"
        except FileNotFoundError:
            out["open_inside"] = "FileNotFoundError"
        try:
            socket.getaddrinfo("api.pod.internal", 80)
            out["dns_inside"] = "resolved"
        except socket.gaierror:
            out["dns_inside"] = "gaierror"
        out["hostname_inside_is_local"] = socket.gethostname() != "blocks-3f1a"
        out["uname_inside_is_local"] = os.uname().nodename != "blocks-3f1a"
        out["env_inside"] = os.environ.get("POD_ONLY")
    for f in (closed_by_app, left_open):
        f.write("after\n")
    os.write(raw_fd, b"after\n")
    closed_by_app.close()
    out["peer_after"] = list(relayed.getpeername())
    relayed.sendall(b"pong")
    out["echo_after"] = relayed.recv(16).decode()
    out["hostname_after"] = [socket.gethostname(), os.uname().nodename]
    relayed.close()
# The session is closed with left_open and raw_fd still open: their writes were sent back first.
out["env_after_close"] = os.environ.get("POD_ONLY")
print(json.dumps(out))
"""


def test_a_local_block_keeps_remote_files_and_sockets(lpod, tmp_path):
    out = _run(STATE, f"pid/{lpod.pid}", _config(tmp_path, "write"), DATA, str(TCP_ECHO_PORT))
    peer = ["127.0.0.1", TCP_ECHO_PORT]
    assert out == {
        "peer_before": peer, "peer_inside": peer, "echo_inside": "ping", "open_inside": "FileNotFoundError",
        "dns_inside": "gaierror", "hostname_inside_is_local": True, "uname_inside_is_local": True,
        "env_inside": "from-the-pod", "peer_after": peer, "echo_after": "pong",
        "hostname_after": ["blocks-3f1a", "blocks-3f1a"], "env_after_close": None,
    }
    every_write = "before\ninside\nafter\n"
    assert _pod_file(lpod, "closed.txt") == every_write
    assert _pod_file(lpod, "left-open.txt") == every_write
    assert _pod_file(lpod, "raw.txt") == every_write
    assert not os.path.exists(DATA)


THREADS_AND_TASKS = r"""
import asyncio, json, socket, sys, threading
import mirror_py

target, echo = sys.argv[1], int(sys.argv[2])
out = {}


def attempt():
    # The pod's loopback has an echo server on this port; this machine has nothing there.
    try:
        with socket.create_connection(("127.0.0.1", echo), timeout=10) as s:
            s.sendall(b"hi")
            return s.recv(2).decode()
    except ConnectionRefusedError:
        return "refused"


with mirror_py.connect(target) as session:
    in_block, other_done = threading.Event(), threading.Event()

    def thread_a():
        with session.local():
            in_block.set()
            other_done.wait(30)  # still in the block while thread B connects
            out["a_connect"] = attempt()

    def thread_b():
        in_block.wait(30)
        out["b_connect"] = attempt()
        other_done.set()

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    async def connect_to():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", echo)
            writer.write(b"hi")
            got = (await reader.readexactly(2)).decode()
            writer.close()
            return got
        except ConnectionRefusedError:
            return "refused"

    async def lookup():
        try:
            await asyncio.get_running_loop().getaddrinfo("api.pod.internal", 80)
            return "resolved"
        except socket.gaierror:
            return "gaierror"

    async def main():
        with session.local():
            local_lookup = asyncio.ensure_future(lookup())  # asyncio resolves in a thread pool
            inside = asyncio.ensure_future(connect_to())
        pod_lookup = asyncio.ensure_future(lookup())
        outside = asyncio.ensure_future(connect_to())
        return {"task_inside": await inside, "task_outside": await outside,
                "lookup_inside": await local_lookup, "lookup_outside": await pod_lookup}

    out.update(asyncio.run(main()))
print(json.dumps(out))
"""


def _nothing_listens_here(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except OSError:
        return True


def test_a_local_block_is_the_calling_threads_and_tasks_only(lpod):
    if not _nothing_listens_here(TCP_ECHO_PORT):
        pytest.skip(f"something on this machine listens on 127.0.0.1:{TCP_ECHO_PORT}, the pod's echo port")
    out = _run(THREADS_AND_TASKS, f"pid/{lpod.pid}", str(TCP_ECHO_PORT))
    assert out == {"a_connect": "refused", "b_connect": "hi", "task_inside": "refused", "task_outside": "hi",
                   "lookup_inside": "gaierror", "lookup_outside": "resolved"}


# ------------------------------------------------------------------------------------------------- close()
CLOSE = r"""
import json, os, socket, sys
import mirror_py

target, config = sys.argv[1], sys.argv[2]
session = mirror_py.connect(target, config=config)
out = {"env_inside": os.environ.get("POD_ONLY"), "resolves": socket.getaddrinfo("api.pod.internal", 80)[0][4][0]}
try:
    session.close()
    out["close"] = "ok"
except Exception as exc:
    out["close"] = f"{type(exc).__name__}: {exc}"
out["env_after"] = os.environ.get("POD_ONLY")
out["session_process_exited"] = session._proc.poll() is not None
try:
    socket.getaddrinfo("api.pod.internal", 80)
    out["resolves_after"] = True
except socket.gaierror:
    out["resolves_after"] = False
with mirror_py.connect(target, config=config):  # a second session in the same process
    out["again"] = [socket.getaddrinfo("api.pod.internal", 80)[0][4][0], socket.gethostname(),
                    os.environ.get("POD_ONLY")]
print(json.dumps(out))
"""


def test_close_with_files_off_restores_everything_and_a_new_session_works(lpod, tmp_path):
    out = _run(CLOSE, f"pid/{lpod.pid}", _config(tmp_path, "local"))
    assert out == {"env_inside": "from-the-pod", "resolves": "127.0.0.1", "close": "ok", "env_after": None,
                   "session_process_exited": True, "resolves_after": False,
                   "again": ["127.0.0.1", "blocks-3f1a", "from-the-pod"]}


LOST = r"""
import json, os, sys
import mirror_py

target, config, data = sys.argv[1], sys.argv[2], sys.argv[3]
session = mirror_py.connect(target, config=config)
socket_path = os.environ["MIRROR_PY_SESSION"]
pending = open(data + "/lost.txt", "w")
pending.write("never flushed\n")
session._proc.kill()  # the session dies before the app's writes went back
session._proc.wait()
out = {}
try:
    session.close()
    out["close"] = "ok"
except OSError as exc:
    out["close"] = str(exc)
out["env_after"] = os.environ.get("POD_ONLY")
__import__("shutil").rmtree(os.path.dirname(socket_path), ignore_errors=True)  # a killed session cannot
out["open_is_local_again"] = open is __import__("io").open and "mirror_py" not in open.__module__
print(json.dumps(out))
"""


def test_close_says_which_writes_did_not_reach_the_target(lpod, tmp_path):
    out = _run(LOST, f"pid/{lpod.pid}", _config(tmp_path, "write"), DATA)
    assert out["close"].startswith(f"mirror-py: writes to {DATA}/lost.txt did not reach the target: "), out
    assert "\n" not in out["close"]
    assert out["env_after"] is None and out["open_is_local_again"] is True


# ------------------------------------------------------------------------------------------ pytest plugin
SUITE = r'''
import socket


def test_sockets_opened_before_a_local_block_keep_the_pods_peer(mirror):
    relayed = socket.create_connection(("127.0.0.1", ECHO), timeout=10)
    with mirror.local():
        inside = relayed.getpeername()
        try:
            socket.getaddrinfo("api.pod.internal", 80)
            resolved = True
        except socket.gaierror:
            resolved = False
    after = relayed.getpeername()
    relayed.sendall(b"x")
    assert relayed.recv(1) == b"x"
    assert resolved is False
    assert inside == after == ("127.0.0.1", ECHO)


def test_a_remote_file_written_across_a_local_block(mirror):
    with open("DATA/from-pytest.txt", "w") as f:
        f.write("before\n")
        with mirror.local():
            f.write("inside\n")
        f.write("after\n")
'''


def test_pytest_local_block_keeps_sockets_and_files(lpod, tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_block.py").write_text(SUITE.replace("ECHO", str(TCP_ECHO_PORT)).replace("DATA", DATA))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--mirror-target",
                          f"pid/{lpod.pid}", "--mirror-config", _config(tmp_path, "write"), str(suite)],
                         capture_output=True, text=True, timeout=180, env=env, cwd=str(suite))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 passed" in out.stdout
    assert _pod_file(lpod, "from-pytest.txt") == "before\ninside\nafter\n"


# ---------------------------------------------------------------------------------------------- IPython
def test_notebook_local_cell_keeps_sockets(lpod, monkeypatch):
    monkeypatch.setenv("MIRROR_PY_TARGET", f"pid/{lpod.pid}")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    cells = [
        "%load_ext mirror_py",
        "%mirror connect",
        f"import socket\nrelayed = socket.create_connection(('127.0.0.1', {TCP_ECHO_PORT}), timeout=10)",
        "%%mirror_local\nprint('inside', *relayed.getpeername())",
        "print('after', *relayed.getpeername())\nrelayed.sendall(b'x')\nprint('echo', relayed.recv(1).decode())",
        "%mirror disconnect",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    texts = ["".join(o.get("text", "") for o in c.outputs if o.get("output_type") == "stream") for c in nb.cells]
    assert texts[3].split() == ["inside", "127.0.0.1", str(TCP_ECHO_PORT)]
    assert texts[4].split() == ["after", "127.0.0.1", str(TCP_ECHO_PORT), "echo", "x"]
