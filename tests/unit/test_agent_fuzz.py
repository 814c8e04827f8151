"""A real agent, started as a local subprocess exactly as a target starts it (``python -c BOOTSTRAP`` with the
bundle on stdin), driven over its pipes with the session's Connection: operations, error handling, and fuzzing
of what arrives on its stdin. The agent must answer errors and keep serving, or close the channel on broken
framing, and never hang or print a traceback."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirror_py_agent import bootstrap
from mirror_py_agent import protocol as p
from tests import pythons

TIMEOUT = 5.0


class Agent:
    """One agent process and the session-side Connection that talks to it."""

    def __init__(self, python: str = sys.executable) -> None:
        self.proc = subprocess.Popen(
            bootstrap.command(python), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._stderr = bytearray()
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        self.conn = p.Connection("session")
        self.events: list[p.Event] = []
        self.eof = False
        self.conn.send_hello()
        self.write(bootstrap.bundle() + self.conn.data_to_send())
        self.hello = self.wait_for(lambda e: isinstance(e, p.Hello))

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for chunk in iter(lambda: self.proc.stderr.read1(65536), b""):  # type: ignore[union-attr]
            self._stderr += chunk

    @property
    def stderr(self) -> str:
        return self._stderr.decode("utf-8", "replace")

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def flush(self) -> None:
        self.write(self.conn.data_to_send())

    def read(self, timeout: float) -> bool:
        """Reads once (waiting up to ``timeout``); returns False on timeout."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return False
        data = os.read(fd, 1 << 20)
        if not data:
            self.eof = True
            return True
        for ev in self.conn.receive_data(data):
            assert not isinstance(ev, p.ConnectionFailed), f"the agent sent bad framing: {ev.message}"
            self.events.append(ev)
        out = self.conn.data_to_send()  # pongs, credit
        if out:
            try:
                self.write(out)
            except BrokenPipeError:
                pass
        return True

    def wait_for(self, pred, timeout: float = TIMEOUT) -> p.Event:
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if pred(ev):
                    return self.events.pop(i)
            if self.eof:
                raise AssertionError(f"the agent closed its stdout; stderr: {self.stderr}")
            left = deadline - time.monotonic()
            if left <= 0 or not self.read(left):
                raise AssertionError(f"no answer from the agent within {timeout} s; stderr: {self.stderr}")

    def request(self, op: str, args: dict | None = None, opens_stream: int | None = None) -> p.Event:
        rid = self.conn.send_request(op, args, opens_stream)
        self.flush()
        return self.wait_for(lambda e: isinstance(e, (p.Reply, p.ErrorReply)) and e.id == rid)

    def stream_bytes(self, sid: int, until_eof: bool = True, timeout: float = TIMEOUT) -> bytes:
        """Collects the data the agent sends on ``sid`` until its EOF (or close)."""
        out = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            keep = []
            done = False
            for ev in self.events:
                if isinstance(ev, p.Data) and ev.stream == sid:
                    out += ev.data
                    self.conn.send_credit(sid, len(ev.data))
                elif isinstance(ev, (p.StreamEof, p.StreamClosed)) and ev.stream == sid:
                    done = True
                else:
                    keep.append(ev)
            self.events = keep
            self.flush()
            if done or (not until_eof and out):
                return bytes(out)
            left = deadline - time.monotonic()
            if self.eof or left <= 0 or not self.read(left):
                raise AssertionError(f"stream {sid} did not end; got {bytes(out)!r}; stderr: {self.stderr}")

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the agent did not exit within {timeout} s; stderr: {self.stderr}") from None
        self._stderr_thread.join(2)
        return code

    def wait_stdout_eof(self, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the agent kept its channel open; stderr: {self.stderr}")
            self.read(left)

    def assert_clean_exit(self, timeout: float = TIMEOUT) -> None:
        code = self.wait_exit(timeout)
        assert "Traceback" not in self.stderr, self.stderr
        assert code == 0, f"exit code {code}; stderr: {self.stderr}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()  # type: ignore[union-attr]
            except OSError:
                pass
        self._stderr_thread.join(2)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def agent() -> Iterator[Agent]:
    a = Agent()
    try:
        yield a
    finally:
        a.kill()


class Server:
    """A local TCP server thread: each connection sends a greeting, reads until EOF, then answers with what
    it read and closes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                conn.sendall(b"greeting\n")
                data = bytearray()
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.received.append(bytes(data))
                conn.sendall(b"got:" + bytes(data))
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def closed_port() -> int:
    """A port on which nothing listens (bound so nobody else takes it during the test)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    _closed_ports.append(s)
    return port


_closed_ports: list[socket.socket] = []


def control(msg: object) -> bytes:
    payload = cbor2.dumps(msg)
    return p.HEADER.pack(p.CONTROL, 0, len(payload)) + payload


def raw(kind: int, sid: int, payload: bytes) -> bytes:
    return p.HEADER.pack(kind, sid, len(payload)) + payload


def tcp_round_trip(agent: Agent, port: int, sid: int = 1, payload: bytes = b"ping from the session") -> None:
    reply = agent.request("connect", {"sid": sid, "host": "127.0.0.1", "port": port}, opens_stream=sid)
    assert isinstance(reply, p.Reply), reply
    assert reply.result["peer"] == ["127.0.0.1", port]
    assert agent.stream_bytes(sid, until_eof=False) == b"greeting\n"
    agent.conn.send_data(sid, payload)
    agent.conn.send_eof(sid)  # half-close: the server sees EOF, its answer must still come back
    agent.flush()
    assert agent.stream_bytes(sid) == b"got:" + payload
    assert not agent.conn.is_open(sid)


# ------------------------------------------------------------------------------------------ operations
def test_hello_describes_the_agent(agent):
    assert agent.hello.version == p.PROTOCOL_VERSION
    assert {"tcp", "dns"} <= set(agent.hello.capabilities)
    assert agent.hello.info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert agent.hello.info["pid"] == agent.proc.pid


def test_getaddrinfo_localhost(agent):
    reply = agent.request("dns", {"fn": "getaddrinfo", "host": "localhost", "port": 80, "type": socket.SOCK_STREAM})
    assert isinstance(reply, p.Reply), reply
    addrs = {tuple(info[4][:2]) for info in reply.result}
    assert ("127.0.0.1", 80) in addrs or ("::1", 80) in addrs
    assert all(info[1] == socket.SOCK_STREAM for info in reply.result)


def test_unknown_op_gets_enotsup_and_the_agent_keeps_serving(agent):
    reply = agent.request("launch_rockets", {"n": 3})
    assert isinstance(reply, p.ErrorReply) and reply.errno == "ENOTSUP", reply
    assert "launch_rockets" in reply.message
    assert agent.request("noop") == p.Reply(reply.id + 1, {})


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("dns", {"fn": "getaddrinfo", "host": 12, "port": 80}),
        ("dns", {"fn": "getaddrinfo", "host": "localhost", "port": [80]}),
        ("dns", {"fn": "no_such_function"}),
        ("dns", {"fn": "getnameinfo", "sockaddr": "127.0.0.1"}),
        ("connect", {"sid": "one", "host": "127.0.0.1", "port": 1}),
        ("connect", {"sid": 1, "host": 127, "port": 1}),
        ("connect", {"sid": 1, "host": "127.0.0.1", "port": 70000}),
        ("connect", {"sid": 1}),
        ("udp_open", {"sid": 1, "family": 99}),
        ("environ", {"pid": "self"}),
        ("environ", {"pid": -1}),
    ],
)
def test_bad_arguments_get_einval_and_the_agent_keeps_serving(agent, op, args):
    reply = agent.request(op, args)
    assert isinstance(reply, p.ErrorReply) and reply.errno == "EINVAL", reply
    assert isinstance(agent.request("noop"), p.Reply)
    assert "Traceback" not in agent.stderr


def test_tcp_data_both_ways_and_half_close(agent, server):
    tcp_round_trip(agent, server.port, sid=1)
    tcp_round_trip(agent, server.port, sid=3, payload=os.urandom(300_000))  # more than one credit threshold
    assert server.received[-1] != b""


def test_tcp_streams_are_independent(agent, server):
    for sid in (1, 3, 5):
        reply = agent.request("connect", {"sid": sid, "host": "127.0.0.1", "port": server.port}, opens_stream=sid)
        assert isinstance(reply, p.Reply), reply
    for sid in (5, 1, 3):
        assert agent.stream_bytes(sid, until_eof=False) == b"greeting\n"
        agent.conn.send_data(sid, f"stream {sid}".encode())
        agent.conn.send_eof(sid)
        agent.flush()
        assert agent.stream_bytes(sid) == f"got:stream {sid}".encode()


def test_connect_to_a_closed_port_is_refused(agent):
    reply = agent.request("connect", {"sid": 1, "host": "127.0.0.1", "port": closed_port()}, opens_stream=1)
    assert isinstance(reply, p.ErrorReply) and reply.errno == "ECONNREFUSED", reply
    assert not agent.conn.is_open(1)
    # the stream id is free again
    assert isinstance(agent.request("noop"), p.Reply)


def test_reusing_an_open_stream_id_is_einval(agent, server):
    assert isinstance(agent.request("connect", {"sid": 1, "host": "127.0.0.1", "port": server.port}), p.Reply)
    reply = agent.request("connect", {"sid": 1, "host": "127.0.0.1", "port": server.port})
    assert isinstance(reply, p.ErrorReply) and reply.errno == "EINVAL", reply


def test_stdin_eof_makes_the_agent_exit_cleanly(agent, server):
    reply = agent.request("connect", {"sid": 1, "host": "127.0.0.1", "port": server.port}, opens_stream=1)
    assert isinstance(reply, p.Reply)
    start = time.monotonic()
    agent.close_stdin()
    agent.assert_clean_exit()
    assert time.monotonic() - start < TIMEOUT
    agent.wait_stdout_eof()


def test_truncated_frame_then_stdin_eof_exits_cleanly(agent):
    agent.write(control({"t": "req", "id": 99, "op": "noop", "args": {}})[:-3])
    agent.close_stdin()
    agent.assert_clean_exit()


def test_truncated_header_then_stdin_eof_exits_cleanly(agent):
    agent.write(p.HEADER.pack(p.DATA, 1, 100)[:5])
    agent.close_stdin()
    agent.assert_clean_exit()


@pytest.mark.parametrize(
    "msg",
    [
        {"t": 10**5000},
        {"t": b"\x00" * (p.MAX_PAYLOAD - 32)},
        {"t": "req", "id": 1001, "op": "\x00" * (p.MAX_PAYLOAD - 64), "args": {}},
        {"t": "req", "id": 1002, "op": "dns", "args": {"fn": 10**5000}},
        {"t": "close", "sid": 1, "errno": 10**5000},
    ],
)
def test_hostile_values_get_errors_and_the_agent_keeps_serving(agent, msg):
    """Values that cannot be printed (an integer of 5000 digits) or quoted back within a frame."""
    agent.write(control(msg))
    err = agent.wait_for(lambda e: isinstance(e, p.ErrorReply))
    assert err.errno in ("ENOTSUP", "EINVAL"), err
    assert isinstance(agent.request("noop"), p.Reply)
    agent.close_stdin()
    agent.assert_clean_exit()


def test_out_of_order_frames_are_ignored(agent, server):
    """Frames for streams that do not exist (yet): data, credit, EOF and close before the stream's open, and a
    reply to a request the agent never made. None of them may disturb the stream opened afterwards."""
    agent.write(
        raw(p.DATA, 5, b"too early")
        + raw(p.CREDIT, 5, (1000).to_bytes(4, "big"))
        + raw(p.EOF, 5, b"")
        + raw(p.DATAGRAM, 5, b"\x09127.0.0.1\x00\x35hi")
        + control({"t": "close", "sid": 5, "errno": "ECONNRESET"})
        + control({"t": "ok", "id": 77, "res": None})
        + control({"t": "err", "id": 78, "errno": "EIO", "msg": "x"})
        + control({"t": "pong", "tok": 3})
    )
    tcp_round_trip(agent, server.port, sid=5)
    assert server.received[-1] == b"ping from the session"
    agent.close_stdin()
    agent.assert_clean_exit()


def test_broken_framing_closes_the_channel(agent):
    agent.write(raw(200, 0, b""))
    agent.wait_stdout_eof()
    agent.assert_clean_exit()
    errs = [e for e in agent.events if isinstance(e, p.ErrorReply)]
    assert errs and errs[-1].errno == "EPROTO", agent.events


def test_data_beyond_the_window_resets_only_that_stream(agent, server):
    for sid in (1, 3):
        assert isinstance(
            agent.request("connect", {"sid": sid, "host": "127.0.0.1", "port": server.port}, opens_stream=sid),
            p.Reply,
        )
    agent.write(raw(p.DATA, 1, b"x" * p.MAX_PAYLOAD) + raw(p.DATA, 1, b"y"))  # one byte over the window
    closed = agent.wait_for(lambda e: isinstance(e, p.StreamClosed) and e.stream == 1)
    assert closed.errno == "EPROTO"
    assert agent.stream_bytes(3, until_eof=False) == b"greeting\n"
    agent.conn.send_data(3, b"still fine")
    agent.conn.send_eof(3)
    agent.flush()
    assert agent.stream_bytes(3) == b"got:still fine"


# ---------------------------------------------------------------------------------------------- fuzzing
def framing_status(data: bytes) -> str:
    """How a receiver's framing layer sees ``data``: "ok" (whole frames), "partial" or "broken"."""
    pos = 0
    while len(data) - pos >= p.HEADER.size:
        kind, _sid, length = p.HEADER.unpack_from(data, pos)
        if kind not in p._KINDS or length > p.MAX_PAYLOAD:
            return "broken"
        if len(data) - pos - p.HEADER.size < length:
            return "partial"
        pos += p.HEADER.size + length
    return "ok" if pos == len(data) else "partial"


_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=4400, max_value=4600).map(lambda n: 10**n),
        st.floats(),
        st.text(max_size=20),
        st.binary(max_size=20),
    ),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8,
)
# Random operations: none that would reach the network (connect, udp_open, dns).
_ops = st.sampled_from(["noop", "environ", "bogus", ""]) | st.text(max_size=12).filter(
    lambda s: s not in ("connect", "udp_open", "dns")
)
# Request ids that cannot collide with the ids of the follow-up requests the test makes itself.
_ids = st.integers().filter(lambda i: not 0 < i < 1000) | _values
_control_maps = st.fixed_dictionaries(
    {"t": st.sampled_from(["req", "ok", "err", "close", "ping", "pong", "hello", "bogus"]) | _values},
    optional={
        "id": _ids,
        "op": _ops | _values,
        "args": st.dictionaries(st.sampled_from(["pid", "sid", "fn", "x"]), _values, max_size=3) | _values,
        "sid": st.integers(0, 6) | _values,
        "errno": _values,
        "msg": _values,
        "tok": _values,
    },
).filter(lambda m: not (m.get("t") == "req" and m.get("op") in ("connect", "udp_open", "dns")))
_sids = st.integers(0, 6) | st.integers(0, 2**32 - 1)
_valid_frames = st.one_of(
    _control_maps.map(control),
    _values.filter(lambda v: not isinstance(v, dict)).map(control),
    st.binary(max_size=40).map(lambda b: raw(p.CONTROL, 0, b)),
    st.tuples(_sids, st.binary(max_size=200)).map(lambda t: raw(p.DATA, *t)),
    st.tuples(_sids, st.binary(max_size=6)).map(lambda t: raw(p.CREDIT, *t)),
    st.tuples(_sids, st.integers(1, 2**32 - 1)).map(lambda t: raw(p.CREDIT, t[0], t[1].to_bytes(4, "big"))),
    _sids.map(lambda sid: raw(p.EOF, sid, b"")),
    st.tuples(_sids, st.binary(max_size=30)).map(lambda t: raw(p.DATAGRAM, *t)),
)
_fuzz_settings = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


@given(frames=st.lists(_valid_frames, min_size=1, max_size=15), with_stream=st.booleans())
@_fuzz_settings
def test_fuzz_valid_framing_gets_errors_and_the_agent_keeps_serving(server, frames, with_stream):
    agent = Agent()
    try:
        if with_stream:  # give the random frames a live stream to hit
            reply = agent.request("connect", {"sid": 1, "host": "127.0.0.1", "port": server.port})
            assert isinstance(reply, p.Reply), reply
        agent.write(b"".join(frames))
        # a follow-up request still succeeds
        assert isinstance(agent.request("noop"), p.Reply)
        tcp_round_trip(agent, server.port, sid=1001)
        agent.close_stdin()
        agent.assert_clean_exit()
    finally:
        agent.kill()


@given(
    frames=st.lists(_valid_frames, max_size=5),
    bad=st.one_of(
        st.tuples(st.integers(5, 255), _sids, st.binary(max_size=20)).map(lambda t: raw(*t)),
        st.tuples(st.sampled_from(p._KINDS), _sids, st.integers(p.MAX_PAYLOAD + 1, 2**32 - 1)).map(
            lambda t: p.HEADER.pack(*t)
        ),
    ),
    tail=st.binary(max_size=50),
)
@_fuzz_settings
def test_fuzz_broken_framing_closes_the_channel(frames, bad, tail):
    agent = Agent()
    try:
        agent.write(b"".join(frames) + bad + tail)
        agent.wait_stdout_eof()
        agent.assert_clean_exit()
    finally:
        agent.kill()


@given(garbage=st.binary(min_size=1, max_size=300))
@_fuzz_settings
def test_fuzz_garbage_bytes(garbage):
    """Arbitrary bytes after the hello: broken framing closes the channel; whole frames leave the agent
    serving; a partial frame waits for more, and stdin EOF then ends the agent cleanly."""
    agent = Agent()
    try:
        agent.write(garbage)
        status = framing_status(garbage)
        if status == "broken":
            agent.wait_stdout_eof()
        elif status == "ok":
            assert isinstance(agent.request("noop"), p.Reply)
        agent.close_stdin()
        agent.assert_clean_exit()
    finally:
        agent.kill()


# ---------------------------------------------------------------------------------------- other Pythons
@pytest.mark.parametrize("version", pythons.AGENT_VERSIONS)
def test_agent_runs_on_supported_pythons(version, server):
    found = pythons.find(version)
    if found is None:
        pytest.skip(pythons.missing_reason(version))
    agent = Agent(found)
    try:
        assert agent.hello.info["python"].startswith(version + ".")
        reply = agent.request("dns", {"fn": "getaddrinfo", "host": "localhost", "port": 80})
        assert isinstance(reply, p.Reply) and reply.result, reply
        assert isinstance(agent.request("nope"), p.ErrorReply)
        tcp_round_trip(agent, server.port, sid=1)
        agent.close_stdin()
        agent.assert_clean_exit()
    finally:
        agent.kill()


@pytest.mark.parametrize("python", ["faked-3.8", "3.8"])
def test_agent_on_a_too_old_python_says_so_in_one_line(python):
    """An older python3 in the target stops at the loader's first lines with the version it has and the one
    the agent needs, not with a traceback from inside the agent (3.8 fails on a subscripted ABC, 3.6 on
    ``from __future__ import annotations``)."""
    if python.startswith("faked-"):
        argv = [sys.executable, "-I", "-c", "import sys\nsys.version_info = (3, 8, 18)\n" + bootstrap.BOOTSTRAP]
    else:
        found = pythons.find(python)
        if found is None:
            pytest.skip(pythons.missing_reason(python))
        argv = bootstrap.command(found)
    proc = subprocess.run(argv, input=bootstrap.bundle(), capture_output=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert proc.stderr.decode().splitlines() == [
        f"mirror-py agent: {argv[0]} is Python 3.8; the agent needs Python 3.9 or newer"]
