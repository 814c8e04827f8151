"""The session side under bad input: the AgentLink facing agents that misbehave (garbage instead of a hello,
a missing interpreter, garbage after the hello), and the shim RPC server facing garbage requests and
clients of another user. Failures must be clear errors, never hangs or exceptions escaping the loop."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirror_py.errors import MirrorError
from mirror_py.session.agent_link import AgentLink, RemoteError
from mirror_py.session.rpc_server import MAX_REQUEST, RpcError, RpcServer
from mirror_py.transport.process import ProcessChannel

STARTUP_TIMEOUT = 3.0

# A fake agent that writes the bytes given (hex) in argv[1] to stdout, then exits, or with argv[2] == "wait"
# reads stdin until EOF first.
GARBAGE_AGENT = r"""
import os, sys
data = bytes.fromhex(sys.argv[1])
while data:
    data = data[os.write(1, data):]
if sys.argv[2] == "wait":
    while os.read(0, 65536):
        pass
"""

MISSING_PYTHON_AGENT = r"""
import sys
sys.stderr.write("python3: No such file or directory\n")
sys.exit(127)
"""

CRASHING_AGENT = r"""
import sys
sys.stderr.write("SyntaxError: something the target's python did not like\n")
sys.exit(1)
"""

# A fake agent that skips the bundle, says a valid hello, and on the first request does what argv[1] says:
# "garbage" (bytes that are no protocol), "exit" (dies), or "reply" (answers properly).
HELLO_THEN_AGENT = r"""
import os, sys
from mirror_py_agent import protocol as p

def read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(0, n - len(buf))
        if not chunk:
            sys.exit(0)
        buf += chunk
    return buf

read_exact(int.from_bytes(read_exact(4), "big"))
conn = p.Connection("agent")
conn.send_hello()
os.write(1, conn.data_to_send())
while True:
    data = os.read(0, 65536)
    if not data:
        sys.exit(0)
    for ev in conn.receive_data(data):
        if isinstance(ev, p.Request):
            if sys.argv[1] == "garbage":
                os.write(1, b"\xfe" * 32)
            elif sys.argv[1] == "exit":
                sys.stderr.write("agent fell over\n")
                sys.exit(3)
            else:
                conn.send_reply(ev.id, {"op": ev.op})
    os.write(1, conn.data_to_send())
"""


def fake(script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", script, *args]


def run_link(argv: list[str], body, timeout: float = STARTUP_TIMEOUT):
    """Runs ``body(link)`` in a fresh event loop and checks nothing escaped to the loop's exception handler."""

    async def main():
        loop = asyncio.get_running_loop()
        escaped: list[dict] = []
        loop.set_exception_handler(lambda _loop, ctx: escaped.append(ctx))
        link = AgentLink(ProcessChannel(argv, "the fake target", "python3"), startup_timeout=timeout)
        try:
            result = await asyncio.wait_for(body(link), 20)
        finally:
            await asyncio.wait_for(link.close(), 10)
        await asyncio.sleep(0)
        assert escaped == [], escaped
        return result

    return asyncio.run(main())


async def expect_start_failure(link: AgentLink) -> tuple[str, float]:
    start = time.monotonic()
    with pytest.raises(MirrorError) as info:
        await link.start()
    return str(info.value), time.monotonic() - start


# -------------------------------------------------------------------------------------------- AgentLink
def test_garbage_before_hello_fails_fast_with_a_clear_message():
    garbage = b"Welcome to the container! Last login: yesterday\n"
    message, elapsed = run_link(fake(GARBAGE_AGENT, garbage.hex(), "wait"), expect_start_failure)
    assert "not mirror-py protocol" in message, message
    assert elapsed < STARTUP_TIMEOUT - 1, "garbage must fail the start at once, not by the startup timeout"


def test_a_partial_frame_and_silence_fails_by_the_startup_timeout():
    message, elapsed = run_link(fake(GARBAGE_AGENT, "0000", "wait"), expect_start_failure, timeout=1.0)
    assert "did not answer within 1 s" in message, message
    assert elapsed < 5


def test_missing_python_in_the_target_is_reported_as_such():
    message, elapsed = run_link(fake(MISSING_PYTHON_AGENT), expect_start_failure)
    assert "python" in message.lower() and "127" in message, message
    assert elapsed < STARTUP_TIMEOUT - 1


def test_agent_dying_during_start_up_reports_its_exit_code_and_stderr():
    message, _ = run_link(fake(CRASHING_AGENT), expect_start_failure)
    assert "exit code 1" in message and "SyntaxError" in message, message


def test_a_proper_fake_agent_works():
    """The positive control for the fake below: hello, then a request answered."""

    async def body(link: AgentLink):
        hello = await link.start()
        assert hello.version == 1
        return await link.request("noop")

    assert run_link(fake(HELLO_THEN_AGENT, "reply"), body) == {"op": "noop"}


def test_garbage_after_hello_fails_pending_requests_with_remote_error():
    async def body(link: AgentLink):
        await link.start()
        pending = [asyncio.ensure_future(link.request("noop")) for _ in range(3)]
        done, _ = await asyncio.wait(pending, timeout=5)
        assert len(done) == 3, "pending requests must fail, not hang"
        for fut in pending:
            exc = fut.exception()
            assert isinstance(exc, RemoteError) and exc.name == "ECONNRESET", exc
            assert "not mirror-py protocol" in exc.message
        # the link stays failed: later requests fail at once
        with pytest.raises(RemoteError):
            await asyncio.wait_for(link.request("noop"), 2)
        await asyncio.wait_for(link.closed.wait(), 5)  # stdin was closed, so the agent exited
        return link.failure

    failure = run_link(fake(HELLO_THEN_AGENT, "garbage"), body)
    assert failure and "not mirror-py protocol" in failure


def test_agent_exiting_after_hello_fails_pending_requests():
    async def body(link: AgentLink):
        await link.start()
        with pytest.raises(RemoteError) as info:
            await asyncio.wait_for(link.request("noop"), 5)
        return info.value.message

    message = run_link(fake(HELLO_THEN_AGENT, "exit"), body)
    assert "exit code 3" in message and "agent fell over" in message, message


@given(garbage=st.binary(min_size=1, max_size=200))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_garbage_instead_of_hello_is_a_mirror_error(garbage):
    message, elapsed = run_link(fake(GARBAGE_AGENT, garbage.hex(), "exit"), expect_start_failure)
    assert message and "Traceback" not in message
    assert elapsed < STARTUP_TIMEOUT - 1


# -------------------------------------------------------------------------------------------- RpcServer
class ServerThread:
    """An RpcServer running in ``asyncio.run`` on a thread of its own, so tests talk to it with plain
    blocking sockets (and forked children). Exceptions that reach the loop's handler are kept."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.escaped: list[dict] = []
        self.calls = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        assert self._ready.wait(5), "the RPC server did not start"

    async def echo(self, req: dict):
        self.calls += 1
        return req.get("x")

    async def fail(self, req: dict):
        raise RpcError("ENOENT", "no such thing")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(lambda _loop, ctx: self.escaped.append(ctx))
        self._stop = asyncio.Event()
        server = RpcServer(self.path, {"echo": self.echo, "fail": self.fail})
        await server.start()
        self._ready.set()
        await self._stop.wait()
        server.close()
        await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


@pytest.fixture(scope="module")
def rpc_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="mirror-py-rpc-test-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def rpc(rpc_dir) -> Iterator[ServerThread]:
    server = ServerThread(os.path.join(rpc_dir, "session.sock"))
    yield server
    server.stop()


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def recv_exact(s: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        try:
            chunk = s.recv(n - len(buf))
        except ConnectionResetError:  # closed with our unread bytes still queued there: a close all the same
            chunk = b""
        if not chunk:
            assert buf == b"", f"the server closed in the middle of a reply: {buf!r}"
            return None
        buf += chunk
    return buf


def read_reply(s: socket.socket) -> dict | None:
    """The next reply, or None when the server closed the connection."""
    head = recv_exact(s, 4)
    if head is None:
        return None
    (size,) = struct.unpack(">I", head)
    body = recv_exact(s, size)
    assert body is not None
    return json.loads(body)


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def call(s: socket.socket, req: dict) -> dict | None:
    s.sendall(frame(json.dumps(req).encode()))
    return read_reply(s)


def assert_serving(rpc: ServerThread) -> None:
    with connect(rpc.path) as s:
        assert call(s, {"op": "echo", "x": [1, "two"]}) == {"ok": [1, "two"]}


def assert_error(reply: dict | None, errno: str | None = None) -> None:
    assert isinstance(reply, dict) and set(reply) == {"err"}, reply
    assert isinstance(reply["err"]["errno"], str) and isinstance(reply["err"]["msg"], str)
    if errno is not None:
        assert reply["err"]["errno"] == errno, reply


def test_rpc_calls_and_errors(rpc):
    with connect(rpc.path) as s:
        assert call(s, {"op": "echo", "x": {"a": 1}}) == {"ok": {"a": 1}}
        assert_error(call(s, {"op": "fail"}), "ENOENT")
        assert_error(call(s, {"op": "nope"}), "ENOTSUP")
        assert_error(call(s, {"x": 1}), "ENOTSUP")
        s.sendall(frame(b"[1, 2]"))
        assert_error(read_reply(s), "EINVAL")
        s.sendall(frame(b"\xff\xfe"))
        assert_error(read_reply(s), "EINVAL")
        # the connection survives all of those
        assert call(s, {"op": "echo", "x": 3}) == {"ok": 3}
    assert os.stat(rpc.path).st_mode & 0o777 == 0o600


def test_rpc_request_over_the_size_limit_is_refused_and_closed(rpc):
    with connect(rpc.path) as s:
        s.sendall(struct.pack(">I", MAX_REQUEST + 1))
        assert_error(read_reply(s), "EMSGSIZE")
        assert read_reply(s) is None
    assert_serving(rpc)


def test_rpc_deeply_nested_json_is_an_error_not_a_crash(rpc):
    escaped_before = len(rpc.escaped)
    with connect(rpc.path) as s:
        s.sendall(frame(b"[" * 200_000 + b"]" * 200_000))
        assert_error(read_reply(s), "EINVAL")
        assert call(s, {"op": "echo", "x": 1}) == {"ok": 1}
    assert rpc.escaped[escaped_before:] == []


def test_rpc_truncated_request_then_close(rpc):
    with connect(rpc.path) as s:
        s.sendall(struct.pack(">I", 100) + b'{"op": "ec')
        s.shutdown(socket.SHUT_WR)
        assert read_reply(s) is None
    assert_serving(rpc)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)
_bodies = st.one_of(
    st.binary(max_size=200),
    _json.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            "op": st.sampled_from(["echo", "fail", "", "connect"]) | _json,
            "x": _json,
            "host": _json,
        },
    ).map(lambda v: json.dumps(v).encode()),
    st.tuples(st.sampled_from([b"[", b'{"a":', b"[{}, "]), st.integers(2000, 100_000)).map(lambda t: t[0] * t[1]),
    st.integers(4400, 6000).map(lambda n: b"1" * n),
    st.text(max_size=50).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@given(
    body=_bodies,
    how=st.sampled_from(["whole", "truncated", "oversized", "two_in_one"]),
    cut=st.integers(0, 1000),
)
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_fuzz_rpc_garbage_gets_an_error_or_a_close_and_the_server_keeps_serving(rpc, body, how, cut):
    escaped_before = len(rpc.escaped)
    with connect(rpc.path) as s:
        if how == "oversized":
            s.sendall(struct.pack(">I", MAX_REQUEST + 1 + cut))
            try:
                s.sendall(body)  # the server may already have answered and closed
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert_error(read_reply(s), "EMSGSIZE")
            assert read_reply(s) is None
        elif how == "truncated":
            data = frame(body)
            s.sendall(data[: cut % len(data)])
            s.shutdown(socket.SHUT_WR)
            assert read_reply(s) is None
        else:
            s.sendall(frame(body) + (frame(b'{"op": "echo", "x": "next"}') if how == "two_in_one" else b""))
            reply = read_reply(s)
            assert reply is not None, "a whole request must be answered"
            if "ok" in reply:
                assert set(reply) == {"ok"} and json.loads(body)["op"] == "echo"
            else:
                assert_error(reply)
            if how == "two_in_one":  # requests are served in order on one connection
                assert read_reply(s) == {"ok": "next"}
            assert call(s, {"op": "echo", "x": 7}) == {"ok": 7}
    assert_serving(rpc)
    assert rpc.escaped[escaped_before:] == []


def _client_as(uid: int, path: str, request: bytes) -> int:
    """Forks a client that drops to ``uid`` and sends ``request``. Exit status: 0 closed without a reply,
    1 got a reply, 2 no answer at all, 3 could not connect (EACCES), 4 anything else."""
    pid = os.fork()
    if pid == 0:
        code = 4
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect(path)
            except PermissionError:
                code = 3
            else:
                try:
                    s.sendall(request)
                    code = 0 if s.recv(100) == b"" else 1
                except (ConnectionResetError, BrokenPipeError):  # refused before or while sending
                    code = 0
                except socket.timeout:
                    code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_rpc_refuses_clients_of_another_user():
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another user")
    base = tempfile.mkdtemp(prefix="mirror-py-rpc-uid-", dir="/tmp")
    server = ServerThread(os.path.join(base, "session.sock"))
    try:
        request = frame(json.dumps({"op": "echo", "x": "secret"}).encode())
        # as created: another user cannot even reach the socket (0600, in a 0700 directory)
        assert _client_as(65534, server.path, request) == 3
        # loosen the file modes: now the peer-credential check alone must refuse the connection
        os.chmod(base, 0o711)
        os.chmod(server.path, 0o666)
        assert _client_as(65534, server.path, request) == 0
        assert server.calls == 0
        # the same request from the session's own user is served
        assert _client_as(os.getuid(), server.path, request) == 1
        assert server.calls == 1
        assert server.escaped == []
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
