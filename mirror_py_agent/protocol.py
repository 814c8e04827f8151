"""The mirror-py wire protocol, as a pure state machine (no sockets, no asyncio).

Both ends — the session on the laptop and the agent in the target — feed the bytes they read into
:meth:`Connection.receive_data` and write out whatever :meth:`Connection.data_to_send` returns. Keeping the
protocol free of I/O lets it be tested, and fuzzed, without processes or sockets.

Framing: every frame is a 9-byte header ``kind:u8 stream:u32 length:u32`` followed by ``length`` bytes of
payload (at most :data:`MAX_PAYLOAD`). Control messages are CBOR maps; stream data, credit, end-of-stream and
datagrams use binary payloads so that bulk bytes are copied, never CBOR-encoded.

Streams carry per-stream credit flow control: a side may send on a stream only as many bytes as the other side
has granted. A receiver grants credit again once it has handed the bytes on, so a slow reader stalls its own
stream only, and memory stays bounded by the windows.

Stream ids: the session opens streams with odd ids (its requests name them); the agent opens streams with even
ids for connections that reach the target (incoming traffic), announced by an ``accept`` control message. The
two ranges never collide, so neither side has to ask the other for an id.

This module is shared with the agent: standard library and cbor2 only, Python 3.9+.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2

from .addresses import decode_address, encode_address

PROTOCOL_VERSION = 1
MIN_PROTOCOL_VERSION = 1
MAX_PAYLOAD = 1 << 20
DEFAULT_WINDOW = 1 << 20
MAX_ERROR_MESSAGE = 4096  # an error quotes what the peer sent: keep it well inside a frame

HEADER = struct.Struct(">BII")
_U32 = struct.Struct(">I")

# frame kinds
CONTROL = 0
DATA = 1
CREDIT = 2
EOF = 3
DATAGRAM = 4
_KINDS = (CONTROL, DATA, CREDIT, EOF, DATAGRAM)


class FlowControlError(Exception):
    """This side tried to send more than the peer has granted on a stream."""


# ----------------------------------------------------------------------------------------------- events
@dataclass
class Event:
    pass


@dataclass
class Hello(Event):
    version: int
    capabilities: list
    window: int
    info: dict


@dataclass
class Request(Event):
    id: int
    op: str
    args: dict


@dataclass
class Reply(Event):
    id: int
    result: Any


@dataclass
class ErrorReply(Event):
    """A failed request: ``errno`` is a symbolic name (ECONNREFUSED, EAI_NONAME, ..., or TIMEOUT for a time
    limit that expired, which is no errno) so each side can raise
    the exception the operation would have raised locally."""

    id: int | None
    errno: str
    message: str


@dataclass
class Data(Event):
    stream: int
    data: bytes


@dataclass
class Credit(Event):
    stream: int
    amount: int


@dataclass
class StreamEof(Event):
    stream: int


@dataclass
class StreamClosed(Event):
    stream: int
    errno: str | None
    message: str


@dataclass
class Datagram(Event):
    stream: int
    host: str
    port: int
    data: bytes


@dataclass
class Accept(Event):
    """The agent opened stream ``stream`` (an even id) for a connection that reached the target on a port the
    session subscribed to (``sub``): ``peer`` is the client's address, ``local`` the address it connected to.
    The stream is open from the moment this event is returned, so data right behind it is never dropped."""

    stream: int
    sub: int
    peer: tuple
    local: tuple


@dataclass
class Ping(Event):
    token: int


@dataclass
class Pong(Event):
    token: int


@dataclass
class ConnectionFailed(Event):
    """Fatal: the peer's bytes cannot be parsed any further; the connection must be closed."""

    message: str


# ------------------------------------------------------------------------------------------------ streams
@dataclass
class _Stream:
    send_window: int
    recv_window: int
    sent_eof: bool = False
    got_eof: bool = False


@dataclass
class Connection:
    """One end of a mirror-py channel.

    ``window`` is the receive window this side grants the peer on every stream; the peer announces its own
    in its hello. Streams are registered with :meth:`open_stream` by both sides once the stream's open request
    has succeeded (the agent before its reply, the session on receiving it).
    """

    role: str
    window: int = DEFAULT_WINDOW
    capabilities: list = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._in = bytearray()
        self._out: list[bytes] = []
        self.queued = 0  # bytes in _out: what a memory budget must count before data_to_send takes them
        self._next_id = 1
        self._streams: dict[int, _Stream] = {}
        self._opening: dict[int, int] = {}  # request id -> stream it opens on success
        self.peer_hello: Hello | None = None
        self.version = PROTOCOL_VERSION
        self._sent_hello = False
        self._failed = False
        self.dropped_frames = 0
        self.data_sent = 0  # stream and datagram payload bytes, each way (what a session's status shows)
        self.data_received = 0

    # ------------------------------------------------------------------------------------------ sending
    def _control(self, msg: dict) -> None:
        payload = cbor2.dumps(msg)
        if len(payload) > MAX_PAYLOAD:
            raise ValueError("control message larger than a frame")
        self._out.append(HEADER.pack(CONTROL, 0, len(payload)) + payload)
        self.queued += HEADER.size + len(payload)

    def send_hello(self) -> None:
        self._sent_hello = True
        self._control(
            {
                "t": "hello",
                "v": PROTOCOL_VERSION,
                "caps": list(self.capabilities),
                "win": self.window,
                "info": dict(self.info),
            }
        )

    def send_request(self, op: str, args: dict | None = None, opens_stream: int | None = None) -> int:
        """Queues a request. With ``opens_stream`` the stream is registered the moment the success reply is
        parsed, so data the peer sends right behind its reply is never dropped."""
        rid = self._next_id
        self._next_id += 1
        if opens_stream is not None:
            self._opening[rid] = opens_stream
        self._control({"t": "req", "id": rid, "op": op, "args": args or {}})
        return rid

    def send_reply(self, rid: int, result: Any) -> None:
        self._control({"t": "ok", "id": rid, "res": result})

    def send_error(self, rid: int | None, errno: str, message: str) -> None:
        if len(message) > MAX_ERROR_MESSAGE:
            message = message[:MAX_ERROR_MESSAGE] + "..."
        self._control({"t": "err", "id": rid, "errno": errno, "msg": message})

    def send_ping(self, token: int) -> None:
        self._control({"t": "ping", "tok": token})

    def _send_pong(self, token: int) -> None:
        self._control({"t": "pong", "tok": token})

    def open_stream(self, sid: int) -> None:
        if sid in self._streams:
            raise ValueError(f"stream {sid} is already open")
        peer_window = self.peer_hello.window if self.peer_hello else DEFAULT_WINDOW
        self._streams[sid] = _Stream(send_window=peer_window, recv_window=self.window)

    def is_open(self, sid: int) -> bool:
        return sid in self._streams

    def send_window(self, sid: int) -> int:
        st = self._streams.get(sid)
        return st.send_window if st else 0

    def send_data(self, sid: int, data: bytes | memoryview) -> None:
        st = self._streams.get(sid)
        if st is None or st.sent_eof:
            raise ValueError(f"stream {sid} is not open for sending")
        n = len(data)
        if n > st.send_window:
            raise FlowControlError(f"stream {sid}: {n} bytes exceed the window of {st.send_window}")
        st.send_window -= n
        self.data_sent += n
        self.queued += n + HEADER.size * ((n + MAX_PAYLOAD - 1) // MAX_PAYLOAD)
        out = self._out
        for off in range(0, n, MAX_PAYLOAD):
            chunk = data[off : off + MAX_PAYLOAD]
            out.append(HEADER.pack(DATA, sid, len(chunk)))
            out.append(chunk if isinstance(chunk, bytes) else bytes(chunk))

    def send_credit(self, sid: int, amount: int) -> None:
        st = self._streams.get(sid)
        if st is None or amount <= 0:
            return
        st.recv_window += amount
        self._out.append(HEADER.pack(CREDIT, sid, 4) + _U32.pack(amount))
        self.queued += HEADER.size + 4

    def send_eof(self, sid: int) -> None:
        st = self._streams.get(sid)
        if st is None or st.sent_eof:
            return
        st.sent_eof = True
        self._out.append(HEADER.pack(EOF, sid, 0))
        self.queued += HEADER.size
        if st.got_eof:
            del self._streams[sid]

    def send_close(self, sid: int, errno: str | None = None, message: str = "") -> None:
        """Ends a stream both ways at once; with an errno it is a reset."""
        if self._streams.pop(sid, None) is None:
            return
        self._control({"t": "close", "sid": sid, "errno": errno, "msg": message})

    def forget_stream(self, sid: int) -> None:
        self._streams.pop(sid, None)

    def send_accept(self, sid: int, sub: int, peer: tuple, local: tuple) -> None:
        """Opens an agent-initiated stream for an incoming connection (agent side only; ``sid`` even)."""
        if self.role != "agent":
            raise ValueError("only the agent opens incoming streams")
        if not _is_int(sid) or sid <= 0 or sid % 2 or sid >= 1 << 32:
            raise ValueError(f"an incoming stream needs an even id in 2..2**32-2, not {sid!r}")
        self.open_stream(sid)
        self._control({"t": "accept", "sid": sid, "sub": sub, "peer": [peer[0], peer[1]],
                       "local": [local[0], local[1]]})

    def send_datagram(self, sid: int, host: str, port: int, data: bytes) -> None:
        payload = encode_address(host, port) + data
        if len(payload) > MAX_PAYLOAD:
            raise ValueError("datagram too large")
        self._out.append(HEADER.pack(DATAGRAM, sid, len(payload)) + payload)
        self.queued += HEADER.size + len(payload)
        self.data_sent += len(data)

    def queued_bytes(self) -> int:
        return self.queued

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out.clear()
        self.queued = 0
        return out

    # ---------------------------------------------------------------------------------------- receiving
    def receive_data(self, data: bytes) -> list[Event]:
        """Parses as many whole frames as ``data`` completes. After a :class:`ConnectionFailed` event every
        further byte is ignored: the stream is out of step and only closing it is safe."""
        if self._failed:
            return []
        buf = self._in
        buf += data
        events: list[Event] = []
        pos = 0
        size = HEADER.size
        end = len(buf)
        view = memoryview(buf)
        try:
            while end - pos >= size:
                kind, sid, length = HEADER.unpack_from(buf, pos)
                if kind not in _KINDS:
                    return self._fail(events, f"unknown frame kind {kind}")
                if length > MAX_PAYLOAD:
                    return self._fail(events, f"frame of {length} bytes exceeds the {MAX_PAYLOAD} limit")
                if end - pos - size < length:
                    break
                start = pos + size
                pos = start + length
                if kind == DATA:
                    self._on_data(events, sid, bytes(view[start:pos]))
                elif kind == CONTROL:
                    self._on_control(events, bytes(view[start:pos]))
                    if self._failed:
                        return events
                elif kind == CREDIT:
                    self._on_credit(events, sid, view[start:pos])
                elif kind == EOF:
                    self._on_eof(events, sid)
                else:
                    self._on_datagram(events, sid, view[start:pos])
        finally:
            view.release()
        if self._failed:
            return events
        del buf[:pos]
        return events

    def _fail(self, events: list[Event], message: str) -> list[Event]:
        self._failed = True
        self._in = bytearray()
        events.append(ConnectionFailed(message))
        return events

    def _on_data(self, events: list[Event], sid: int, payload: bytes) -> None:
        st = self._streams.get(sid)
        if st is None or st.got_eof:
            # A stream closed by this side may still have frames in flight: drop them.
            self.dropped_frames += 1
            return
        if len(payload) > st.recv_window:
            del self._streams[sid]
            self._control(
                {"t": "close", "sid": sid, "errno": "EPROTO", "msg": "peer exceeded the stream's credit"}
            )
            events.append(StreamClosed(sid, "EPROTO", "peer exceeded the stream's credit"))
            return
        st.recv_window -= len(payload)
        self.data_received += len(payload)
        events.append(Data(sid, payload))

    def _on_credit(self, events: list[Event], sid: int, payload: memoryview) -> None:
        st = self._streams.get(sid)
        if st is None or len(payload) != 4:
            self.dropped_frames += 1
            return
        (amount,) = _U32.unpack(payload)
        st.send_window += amount
        events.append(Credit(sid, amount))

    def _on_eof(self, events: list[Event], sid: int) -> None:
        st = self._streams.get(sid)
        if st is None or st.got_eof:
            self.dropped_frames += 1
            return
        st.got_eof = True
        if st.sent_eof:
            del self._streams[sid]
        events.append(StreamEof(sid))

    def _on_datagram(self, events: list[Event], sid: int, payload: memoryview) -> None:
        try:
            host, port, off = decode_address(payload)
        except (ValueError, UnicodeDecodeError):
            self.dropped_frames += 1
            return
        self.data_received += len(payload) - off
        events.append(Datagram(sid, host, port, bytes(payload[off:])))

    def _on_control(self, events: list[Event], payload: bytes) -> None:
        try:
            msg = cbor2.loads(payload)
        except Exception as exc:  # any decoding failure of a well-framed message is recoverable
            if self.peer_hello is None:
                self._fail(events, f"expected hello first, got an undecodable control message: {exc}")
                return
            self.send_error(None, "EPROTO", f"undecodable control message: {exc}")
            return
        if not isinstance(msg, dict):
            if self.peer_hello is None:
                self._fail(events, "expected hello first, got a control message that is not a map")
                return
            self.send_error(None, "EPROTO", "control message is not a map")
            return
        kind = msg.get("t")
        if self.peer_hello is None:
            if kind != "hello":
                self._fail(events, f"expected hello first, got {_describe(kind)}")
                return
            self._on_hello(events, msg)
            return
        try:
            handler = _CONTROL_HANDLERS.get(kind) if isinstance(kind, str) else None
            if handler is None:
                self.send_error(_request_id(msg), "ENOTSUP", f"unknown message type {_describe(kind)}")
                return
            handler(self, events, msg)
        except (KeyError, TypeError, ValueError) as exc:
            self.send_error(_request_id(msg), "EINVAL", f"malformed {_describe(kind)} message: {exc!r}")

    def _on_hello(self, events: list[Event], msg: dict) -> None:
        version = msg.get("v")
        window = msg.get("win", DEFAULT_WINDOW)
        caps = msg.get("caps", [])
        info = msg.get("info", {})
        if not isinstance(version, int) or isinstance(version, bool):
            self._fail(events, "hello without a protocol version")
            return
        if version < MIN_PROTOCOL_VERSION:
            self._fail(events, f"peer speaks protocol {version}, the oldest supported is {MIN_PROTOCOL_VERSION}")
            return
        if not isinstance(window, int) or isinstance(window, bool) or not 1024 <= window <= 1 << 30:
            self._fail(events, f"hello with an invalid window {_describe(window)}")
            return
        if not isinstance(caps, list) or not isinstance(info, dict):
            self._fail(events, "hello with malformed capabilities or info")
            return
        self.version = min(PROTOCOL_VERSION, version)
        hello = Hello(self.version, caps, window, info)
        self.peer_hello = hello
        events.append(hello)

    def _on_req(self, events: list[Event], msg: dict) -> None:
        rid, op, args = msg["id"], msg["op"], msg.get("args", {})
        if not _is_int(rid) or not isinstance(op, str) or not isinstance(args, dict):
            raise ValueError("id must be an integer, op a string and args a map")
        events.append(Request(rid, op, args))

    def _on_ok(self, events: list[Event], msg: dict) -> None:
        rid = msg["id"]
        if not _is_int(rid):
            raise ValueError("id must be an integer")
        sid = self._opening.pop(rid, None)
        if sid is not None and sid not in self._streams:
            self.open_stream(sid)
        events.append(Reply(rid, msg.get("res")))

    def _on_err(self, events: list[Event], msg: dict) -> None:
        rid = msg.get("id")
        if rid is not None and not _is_int(rid):
            raise ValueError("id must be an integer or null")
        self._opening.pop(rid, None)
        events.append(ErrorReply(rid, str(msg.get("errno", "EIO")), str(msg.get("msg", ""))))

    def _on_close(self, events: list[Event], msg: dict) -> None:
        sid = msg["sid"]
        if not _is_int(sid):
            raise ValueError("sid must be an integer")
        errno = msg.get("errno")
        closed = StreamClosed(sid, str(errno) if errno is not None else None, str(msg.get("msg", "")))
        if self._streams.pop(sid, None) is None:
            self.dropped_frames += 1
            return
        events.append(closed)

    def _on_accept(self, events: list[Event], msg: dict) -> None:
        if self.role == "agent":
            raise ValueError("only the agent opens incoming streams")
        sid, sub = msg["sid"], msg["sub"]
        if not _is_int(sid) or sid <= 0 or sid % 2 or sid >= 1 << 32:
            raise ValueError("sid must be an even integer in 2..2**32-2")
        if not _is_int(sub):
            raise ValueError("sub must be an integer")
        peer, local = _address_pair(msg["peer"]), _address_pair(msg["local"])
        if sid in self._streams:
            raise ValueError(f"stream {sid} is already open")
        self.open_stream(sid)
        events.append(Accept(sid, sub, peer, local))

    def _on_ping(self, events: list[Event], msg: dict) -> None:
        tok = msg.get("tok", 0)
        self._send_pong(tok if _is_int(tok) else 0)
        events.append(Ping(tok if _is_int(tok) else 0))

    def _on_pong(self, events: list[Event], msg: dict) -> None:
        tok = msg.get("tok", 0)
        events.append(Pong(tok if _is_int(tok) else 0))

    def _on_second_hello(self, events: list[Event], msg: dict) -> None:
        self.send_error(None, "EPROTO", "hello was already received")


def _describe(value: object) -> str:
    """A short repr of a value the peer sent, for error messages: never huge, never raising (an integer of
    more than 4300 digits cannot be printed)."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 200 else text[:200] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _address_pair(value: object) -> tuple:
    if (not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str) or not _is_int(value[1])
            or not 0 <= value[1] <= 65535):
        raise ValueError("an address must be [host, port]")
    return (value[0], value[1])


def _request_id(msg: dict) -> int | None:
    rid = msg.get("id")
    return rid if _is_int(rid) and msg.get("t") == "req" else None


_CONTROL_HANDLERS = {
    "req": Connection._on_req,
    "ok": Connection._on_ok,
    "err": Connection._on_err,
    "close": Connection._on_close,
    "accept": Connection._on_accept,
    "ping": Connection._on_ping,
    "pong": Connection._on_pong,
    "hello": Connection._on_second_hello,
}
