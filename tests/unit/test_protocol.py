"""The sans-I/O wire protocol, exercised with two Connection objects wired back to back (no sockets, no
processes): handshake, requests, streams with credit flow control, framing limits, and fuzzing."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mirror_py_agent import protocol as p

SID = 1


# ------------------------------------------------------------------------------------------------ helpers
def pair(session_window: int = p.DEFAULT_WINDOW, agent_window: int = p.DEFAULT_WINDOW):
    """A session and an agent Connection after a completed hello exchange."""
    a = p.Connection("session", window=session_window, capabilities=["x"], info={"who": "session"})
    b = p.Connection("agent", window=agent_window, capabilities=["tcp", "dns"], info={"who": "agent"})
    a.send_hello()
    b.send_hello()
    ev_b = b.receive_data(a.data_to_send())
    ev_a = a.receive_data(b.data_to_send())
    assert [type(e) for e in ev_a] == [p.Hello]
    assert [type(e) for e in ev_b] == [p.Hello]
    return a, b


def pump(src: p.Connection, dst: p.Connection) -> list[p.Event]:
    return dst.receive_data(src.data_to_send())


def control(msg: object) -> bytes:
    payload = cbor2.dumps(msg)
    return p.HEADER.pack(p.CONTROL, 0, len(payload)) + payload


def raw(kind: int, sid: int, payload: bytes) -> bytes:
    return p.HEADER.pack(kind, sid, len(payload)) + payload


def errors(conn: p.Connection) -> list[p.ErrorReply]:
    """The error replies ``conn`` queued, as a fresh peer parses them."""
    peer = p.Connection("peer")
    peer.receive_data(control({"t": "hello", "v": p.PROTOCOL_VERSION}))
    events = peer.receive_data(conn.data_to_send())
    assert all(isinstance(e, p.ErrorReply) for e in events), events
    return events  # type: ignore[return-value]


def frames(data: bytes) -> list[tuple[int, int, bytes]]:
    out = []
    pos = 0
    while pos < len(data):
        kind, sid, length = p.HEADER.unpack_from(data, pos)
        pos += p.HEADER.size
        out.append((kind, sid, data[pos : pos + length]))
        pos += length
    assert pos == len(data)
    return out


def open_both(a: p.Connection, b: p.Connection, sid: int = SID) -> None:
    a.open_stream(sid)
    b.open_stream(sid)


# -------------------------------------------------------------------------------------------- handshake
def test_hello_exchange_carries_capabilities_window_and_info():
    a = p.Connection("session", window=4096, capabilities=["x"], info={"who": "session"})
    b = p.Connection("agent", capabilities=["tcp", "dns"], info={"who": "agent"})
    a.send_hello()
    b.send_hello()
    (hb,) = b.receive_data(a.data_to_send())
    (ha,) = a.receive_data(b.data_to_send())
    assert hb == p.Hello(p.PROTOCOL_VERSION, ["x"], 4096, {"who": "session"})
    assert ha == p.Hello(p.PROTOCOL_VERSION, ["tcp", "dns"], p.DEFAULT_WINDOW, {"who": "agent"})
    assert a.peer_hello == ha and b.peer_hello == hb
    # the window a peer announces is what this side may send on a new stream
    b.open_stream(SID)
    assert b.send_window(SID) == 4096


def test_version_negotiation_lower_wins(monkeypatch):
    monkeypatch.setattr(p, "PROTOCOL_VERSION", 5)
    monkeypatch.setattr(p, "MIN_PROTOCOL_VERSION", 2)
    older = p.Connection("agent")
    (hello,) = older.receive_data(control({"t": "hello", "v": 3}))
    assert hello.version == 3 and older.version == 3
    newer = p.Connection("agent")
    (hello,) = newer.receive_data(control({"t": "hello", "v": 9}))
    assert hello.version == 5 and newer.version == 5


@pytest.mark.parametrize(
    "hello",
    [
        {"t": "hello", "v": p.MIN_PROTOCOL_VERSION - 1},
        {"t": "hello", "v": -7},
        {"t": "hello"},
        {"t": "hello", "v": "1"},
        {"t": "hello", "v": True},
        {"t": "hello", "v": 1, "win": 10},
        {"t": "hello", "v": 1, "win": 1 << 31},
        {"t": "hello", "v": 1, "caps": "tcp"},
        {"t": "hello", "v": 1, "info": [1]},
    ],
)
def test_bad_or_too_old_hello_fails_the_connection(hello):
    conn = p.Connection("agent")
    events = conn.receive_data(control(hello) + control({"t": "hello", "v": p.PROTOCOL_VERSION}))
    assert len(events) == 1 and isinstance(events[0], p.ConnectionFailed), events
    assert conn.peer_hello is None
    # after a failure every byte is ignored, even a perfectly good hello
    assert conn.receive_data(control({"t": "hello", "v": p.PROTOCOL_VERSION})) == []


def test_too_old_version_message_names_the_versions():
    conn = p.Connection("agent")
    (ev,) = conn.receive_data(control({"t": "hello", "v": 0}))
    assert isinstance(ev, p.ConnectionFailed)
    assert "0" in ev.message and str(p.MIN_PROTOCOL_VERSION) in ev.message


@pytest.mark.parametrize(
    "first",
    [
        control({"t": "req", "id": 1, "op": "dns", "args": {}}),
        control({"t": "ping", "tok": 1}),
        control({"v": 1}),
        control([1, 2, 3]),
        raw(p.CONTROL, 0, b"\xff\xfe not cbor"),
    ],
)
def test_non_hello_first_message_fails_the_connection(first):
    conn = p.Connection("agent")
    events = conn.receive_data(first)
    assert [type(e) for e in events] == [p.ConnectionFailed]
    assert conn.receive_data(control({"t": "hello", "v": 1})) == []


def test_second_hello_gets_an_error_reply_and_changes_nothing():
    a, b = pair(agent_window=4096)
    assert b.receive_data(control({"t": "hello", "v": 1, "win": 1 << 20})) == []
    (err,) = errors(b)
    assert err.errno == "EPROTO" and err.id is None
    assert b.peer_hello is not None and b.peer_hello.window == p.DEFAULT_WINDOW
    # and the connection still works
    a.send_request("noop")
    assert [type(e) for e in pump(a, b)] == [p.Request]


# ------------------------------------------------------------------------------------- requests, replies
def test_request_reply_and_error_round_trip_with_ids():
    a, b = pair()
    r1 = a.send_request("dns", {"fn": "getaddrinfo", "host": "db", "port": 5432})
    r2 = a.send_request("connect", {"host": "10.0.0.1", "port": 1})
    r3 = a.send_request("environ")
    assert len({r1, r2, r3}) == 3
    assert pump(a, b) == [
        p.Request(r1, "dns", {"fn": "getaddrinfo", "host": "db", "port": 5432}),
        p.Request(r2, "connect", {"host": "10.0.0.1", "port": 1}),
        p.Request(r3, "environ", {}),
    ]
    b.send_error(r2, "ECONNREFUSED", "Connection refused")
    b.send_reply(r1, [[2, 1, 6, "", ["10.0.0.5", 5432]]])
    b.send_reply(r3, None)
    assert pump(b, a) == [
        p.ErrorReply(r2, "ECONNREFUSED", "Connection refused"),
        p.Reply(r1, [[2, 1, 6, "", ["10.0.0.5", 5432]]]),
        p.Reply(r3, None),
    ]


@pytest.mark.parametrize("name", ["ECONNREFUSED", "EAI_NONAME", "ENOENT", "EACCES", "ETIMEDOUT", "H_ERRNO_1"])
def test_errno_names_are_preserved(name):
    a, b = pair()
    rid = a.send_request("x")
    pump(a, b)
    b.send_error(rid, name, f"message for {name}")
    assert pump(b, a) == [p.ErrorReply(rid, name, f"message for {name}")]


def test_ping_is_answered_with_pong():
    a, b = pair()
    a.send_ping(4242)
    assert pump(a, b) == [p.Ping(4242)]
    assert pump(b, a) == [p.Pong(4242)]


def test_unknown_message_type_gets_enotsup_not_a_crash():
    a, b = pair()
    assert b.receive_data(control({"t": "frobnicate", "x": 1})) == []
    (err,) = errors(b)
    assert err.errno == "ENOTSUP" and "frobnicate" in err.message
    # a request-shaped message of unknown type is not a request: no id to answer
    assert b.receive_data(control({"t": 17, "id": 3})) == []
    assert errors(b)[0].errno == "ENOTSUP"
    a.send_request("noop")
    assert [type(e) for e in pump(a, b)] == [p.Request]


@pytest.mark.parametrize(
    ("msg", "rid"),
    [
        ({"t": "req", "id": 5}, 5),  # no op
        ({"t": "req", "id": 5, "op": 3}, 5),
        ({"t": "req", "id": 5, "op": "x", "args": [1]}, 5),
        ({"t": "req", "id": "5", "op": "x"}, None),
        ({"t": "req", "id": True, "op": "x"}, None),
        ({"t": "req", "op": "x"}, None),
        ({"t": "ok"}, None),
        ({"t": "ok", "id": "1"}, None),
        ({"t": "err", "id": "1"}, None),
        ({"t": "close"}, None),
        ({"t": "close", "sid": "1"}, None),
    ],
)
def test_malformed_fields_get_einval(msg, rid):
    _a, b = pair()
    assert b.receive_data(control(msg)) == []
    (err,) = errors(b)
    assert err.errno == "EINVAL" and err.id == rid


def test_undecodable_or_non_map_control_after_hello_gets_eproto():
    _a, b = pair()
    assert b.receive_data(raw(p.CONTROL, 0, b"\xff\xff")) == []
    assert errors(b)[0].errno == "EPROTO"
    assert b.receive_data(control([1, 2])) == []
    assert errors(b)[0].errno == "EPROTO"


def test_error_for_a_huge_peer_value_stays_within_a_frame():
    """The peer controls what is quoted back in an error; the error must still fit in one frame."""
    _a, b = pair()
    for msg in (
        {"t": b"\x00" * (p.MAX_PAYLOAD - 32)},
        {"t": 10**5000},
        {"t": "req", "id": 1, "op": 10**5000},
        {"t": "close", "sid": 1, "errno": 10**5000},
    ):
        assert b.receive_data(control(msg)) == []
        (err,) = errors(b)
        assert err.errno in ("ENOTSUP", "EINVAL")
        assert len(err.message) < 10_000


def test_malformed_close_leaves_the_stream_as_it_was():
    """A close that cannot be parsed is rejected as a whole: the stream must not vanish without the
    StreamClosed event its relay needs."""
    a, b = pair()
    open_both(a, b)
    assert b.receive_data(control({"t": "close", "sid": SID, "errno": 10**5000})) == []
    assert errors(b)[0].errno == "EINVAL"
    assert b.is_open(SID)
    a.send_close(SID, "ECONNRESET", "reset")
    assert pump(a, b) == [p.StreamClosed(SID, "ECONNRESET", "reset")]


def test_huge_value_in_first_hello_fails_cleanly():
    conn = p.Connection("agent")
    (ev,) = conn.receive_data(control({"t": "hello", "v": 1, "win": 10**5000}))
    assert isinstance(ev, p.ConnectionFailed)
    conn = p.Connection("agent")
    (ev,) = conn.receive_data(control({"t": 10**5000}))
    assert isinstance(ev, p.ConnectionFailed)


def test_send_error_truncates_an_overlong_message():
    _a, b = pair()
    b.send_error(1, "EINVAL", "x" * (2 * p.MAX_PAYLOAD))
    (err,) = errors(b)
    assert err.errno == "EINVAL" and err.message.startswith("xxx") and len(err.message) < p.MAX_PAYLOAD


# ---------------------------------------------------------------------------------------------- framing
@pytest.mark.parametrize(
    "bad",
    [
        p.HEADER.pack(5, 0, 0),
        p.HEADER.pack(255, 1, 3) + b"abc",
        p.HEADER.pack(p.DATA, SID, p.MAX_PAYLOAD + 1),
        p.HEADER.pack(p.CONTROL, 0, 0xFFFFFFFF),
    ],
)
def test_unknown_kind_or_oversized_length_fails_and_later_bytes_are_ignored(bad):
    a, b = pair()
    open_both(a, b)
    a.send_data(SID, b"before")
    events = b.receive_data(a.data_to_send() + bad + raw(p.DATA, SID, b"after"))
    assert events[0] == p.Data(SID, b"before")
    assert [type(e) for e in events[1:]] == [p.ConnectionFailed]
    a.send_data(SID, b"later")
    a.send_request("noop")
    assert b.receive_data(a.data_to_send()) == []


def _mixed_traffic() -> tuple[bytes, list[p.Event]]:
    """A byte stream from a session exercising every frame kind, and the events the agent parses from it
    in one go."""
    a = p.Connection("session", window=4096)
    a.send_hello()
    b_hello = p.Connection("agent", window=2048)
    b_hello.send_hello()
    a.receive_data(b_hello.data_to_send())
    a.open_stream(1)
    a.open_stream(3)
    a.send_request("dns", {"fn": "getaddrinfo", "host": "svc", "port": None})
    a.send_data(1, b"hello world")
    a.send_data(3, bytes(range(256)) * 4)
    a.send_credit(1, 1234)
    a.send_ping(7)
    a.send_datagram(3, "2001:db8::1", 53, b"\x00\x01query")
    a.send_eof(1)
    a.send_close(3, "ECONNRESET", "reset by peer")
    a.send_request("noop")
    data = a.data_to_send()
    whole = p.Connection("agent", window=2048)
    whole.open_stream(1)
    whole.open_stream(3)
    return data, whole.receive_data(data)


def test_frames_fed_one_byte_at_a_time_parse_identically():
    data, expected = _mixed_traffic()
    assert [type(e) for e in expected] == [
        p.Hello,
        p.Request,
        p.Data,
        p.Data,
        p.Credit,
        p.Ping,
        p.Datagram,
        p.StreamEof,
        p.StreamClosed,
        p.Request,
    ]
    conn = p.Connection("agent", window=2048)
    conn.open_stream(1)
    conn.open_stream(3)
    got: list[p.Event] = []
    for i in range(len(data)):
        got += conn.receive_data(data[i : i + 1])
    assert got == expected


@given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
@settings(max_examples=100, deadline=None)
def test_frames_split_at_arbitrary_points_parse_identically(cuts):
    data, expected = _mixed_traffic()
    points = sorted({c % (len(data) + 1) for c in cuts})
    conn = p.Connection("agent", window=2048)
    conn.open_stream(1)
    conn.open_stream(3)
    got: list[p.Event] = []
    prev = 0
    for point in [*points, len(data)]:
        got += conn.receive_data(data[prev:point])
        prev = point
    assert got == expected


# ------------------------------------------------------------------------------------------ flow control
def test_send_beyond_window_raises_and_credit_restores_it():
    a, b = pair(agent_window=2048)
    open_both(a, b)
    assert a.send_window(SID) == 2048
    a.send_data(SID, b"x" * 2000)
    assert a.send_window(SID) == 48
    with pytest.raises(p.FlowControlError):
        a.send_data(SID, b"y" * 49)
    assert a.send_window(SID) == 48  # a refused send changes nothing
    a.send_data(SID, b"y" * 48)
    with pytest.raises(p.FlowControlError):
        a.send_data(SID, b"z")
    assert pump(a, b) == [p.Data(SID, b"x" * 2000), p.Data(SID, b"y" * 48)]
    b.send_credit(SID, 1500)
    assert pump(b, a) == [p.Credit(SID, 1500)]
    assert a.send_window(SID) == 1500
    a.send_data(SID, b"z" * 1500)
    assert pump(a, b) == [p.Data(SID, b"z" * 1500)]
    assert b.is_open(SID)


def test_credit_adds_to_what_is_left_of_the_window():
    a, b = pair(agent_window=1024)
    open_both(a, b)
    a.send_data(SID, b"x" * 600)
    assert pump(a, b) == [p.Data(SID, b"x" * 600)]
    b.send_credit(SID, 100)
    b.send_credit(SID, 200)
    assert pump(b, a) == [p.Credit(SID, 100), p.Credit(SID, 200)]
    assert a.send_window(SID) == 1024 - 600 + 300
    a.send_data(SID, b"y" * 724)
    # the receiver accounts the same way: all 724 bytes are within what it granted
    assert pump(a, b) == [p.Data(SID, b"y" * 724)]
    with pytest.raises(p.FlowControlError):
        a.send_data(SID, b"z")


def test_zero_or_negative_credit_and_credit_for_unknown_stream_send_nothing():
    _a, b = pair()
    b.open_stream(SID)
    b.send_credit(SID, 0)
    b.send_credit(SID, -5)
    b.send_credit(99, 100)
    assert b.data_to_send() == b""


def test_sending_on_an_unopened_stream_is_an_error():
    a, _b = pair()
    with pytest.raises(ValueError):
        a.send_data(7, b"x")
    assert a.send_window(7) == 0


def test_peer_exceeding_its_credit_resets_only_that_stream():
    a, b = pair(agent_window=1024)
    open_both(a, b, 1)
    open_both(a, b, 3)
    # a misbehaving sender ignores the window of 1024 on stream 1
    events = b.receive_data(raw(p.DATA, 1, b"a" * 1000) + raw(p.DATA, 1, b"b" * 25) + raw(p.DATA, 3, b"ok"))
    assert events == [
        p.Data(1, b"a" * 1000),
        p.StreamClosed(1, "EPROTO", "peer exceeded the stream's credit"),
        p.Data(3, b"ok"),
    ]
    assert not b.is_open(1) and b.is_open(3)
    # the sender is told why its stream ended
    assert pump(b, a) == [p.StreamClosed(1, "EPROTO", "peer exceeded the stream's credit")]
    assert not a.is_open(1)
    # late frames for the reset stream are dropped; the other stream keeps working both ways
    before = b.dropped_frames
    assert b.receive_data(raw(p.DATA, 1, b"late")) == []
    assert b.dropped_frames == before + 1
    a.send_data(3, b"more")
    assert pump(a, b) == [p.Data(3, b"more")]
    b.send_data(3, b"back")
    assert pump(b, a) == [p.Data(3, b"back")]


# ----------------------------------------------------------------------------------------------- streams
def test_eof_both_ways_removes_the_stream():
    a, b = pair()
    open_both(a, b)
    a.send_data(SID, b"request")
    a.send_eof(SID)
    assert pump(a, b) == [p.Data(SID, b"request"), p.StreamEof(SID)]
    assert a.is_open(SID) and b.is_open(SID)  # half-closed: the other direction still flows
    with pytest.raises(ValueError):
        a.send_data(SID, b"after eof")
    b.send_data(SID, b"response")
    b.send_eof(SID)
    assert not b.is_open(SID)
    assert pump(b, a) == [p.Data(SID, b"response"), p.StreamEof(SID)]
    assert not a.is_open(SID)
    # a stream id can be reused once both sides are done with it
    open_both(a, b)


def test_data_after_peer_eof_and_duplicate_eof_are_dropped_and_counted():
    a, b = pair()
    open_both(a, b)
    assert b.receive_data(raw(p.EOF, SID, b"")) == [p.StreamEof(SID)]
    assert b.receive_data(raw(p.DATA, SID, b"x") + raw(p.EOF, SID, b"")) == []
    assert b.dropped_frames == 2


def test_close_with_errno_and_plain_close():
    a, b = pair()
    open_both(a, b, 1)
    open_both(a, b, 3)
    a.send_close(1, "ECONNRESET", "reset by peer")
    a.send_close(3)
    assert not a.is_open(1) and not a.is_open(3)
    assert pump(a, b) == [p.StreamClosed(1, "ECONNRESET", "reset by peer"), p.StreamClosed(3, None, "")]
    assert not b.is_open(1) and not b.is_open(3)
    a.send_close(1)  # closing twice sends nothing
    assert a.data_to_send() == b""


def test_frames_for_unknown_or_closed_streams_are_dropped_and_counted():
    a, b = pair()
    incoming = (
        raw(p.DATA, 99, b"x")
        + raw(p.CREDIT, 99, (5).to_bytes(4, "big"))
        + raw(p.EOF, 99, b"")
        + control({"t": "close", "sid": 99})
    )
    assert b.receive_data(incoming) == []
    assert b.dropped_frames == 4
    # a stream this side has closed may still have frames in flight
    open_both(a, b)
    b.send_close(SID, "ECONNRESET", "gone")
    a.send_data(SID, b"in flight")
    assert pump(a, b) == []
    assert b.dropped_frames == 5
    # a malformed credit payload on a live stream is dropped too
    open_both(a, b, 5)
    assert b.receive_data(raw(p.CREDIT, 5, b"\x00\x01")) == []
    assert b.dropped_frames == 6


def test_opens_stream_registers_the_stream_before_data_behind_the_reply():
    a, b = pair()
    rid = a.send_request("connect", {"sid": 7, "host": "10.0.0.1", "port": 80}, opens_stream=7)
    assert not a.is_open(7)
    (req,) = pump(a, b)
    b.open_stream(7)
    b.send_reply(req.id, {"peer": ["10.0.0.1", 80]})
    b.send_data(7, b"server speaks first")
    b.send_eof(7)
    # reply, data and eof arrive in one read
    assert pump(b, a) == [p.Reply(rid, {"peer": ["10.0.0.1", 80]}), p.Data(7, b"server speaks first"), p.StreamEof(7)]
    assert a.is_open(7)
    a.send_data(7, b"client")
    assert pump(a, b) == [p.Data(7, b"client")]


def test_opens_stream_is_not_registered_on_error():
    a, b = pair()
    rid = a.send_request("connect", {"sid": 9}, opens_stream=9)
    pump(a, b)
    b.send_error(rid, "ECONNREFUSED", "refused")
    assert pump(b, a) == [p.ErrorReply(rid, "ECONNREFUSED", "refused")]
    assert not a.is_open(9)
    assert a.receive_data(raw(p.DATA, 9, b"x")) == []
    assert a.dropped_frames == 1


@pytest.mark.parametrize("host", ["10.0.0.5", "0.0.0.0", "255.255.255.255", "::1", "2001:db8::1", "fe80::1%eth0"])
@pytest.mark.parametrize("port", [0, 53, 65535])
def test_datagrams_round_trip(host, port):
    a, b = pair()
    open_both(a, b)
    a.send_datagram(SID, host, port, b"\x00query\xff")
    a.send_datagram(SID, host, port, b"")
    assert pump(a, b) == [p.Datagram(SID, host, port, b"\x00query\xff"), p.Datagram(SID, host, port, b"")]


def test_malformed_datagram_address_is_dropped():
    _a, b = pair()
    assert b.receive_data(raw(p.DATAGRAM, SID, b"") + raw(p.DATAGRAM, SID, b"\x09short")) == []
    assert b.dropped_frames == 2


def test_payload_over_one_mib_is_split_into_frames_of_at_most_one_mib():
    a, b = pair(agent_window=8 << 20)
    open_both(a, b)
    payload = bytes(range(251)) * ((5 << 20) // 502)  # about 2.5 MiB, not a multiple of the frame size
    a.send_data(SID, memoryview(payload))
    data = a.data_to_send()
    fs = frames(data)
    assert len(fs) == 3
    assert all(kind == p.DATA and sid == SID and len(body) <= p.MAX_PAYLOAD for kind, sid, body in fs)
    assert b"".join(body for _, _, body in fs) == payload
    events = b.receive_data(data)
    assert b"".join(e.data for e in events) == payload


def test_oversized_control_message_is_refused_when_sending():
    a, _b = pair()
    with pytest.raises(ValueError):
        a.send_reply(1, b"x" * (p.MAX_PAYLOAD + 1))


# ------------------------------------------------------------------------------------------------- fuzz
_cbor_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=4400, max_value=5000).map(lambda n: 10**n),  # too long to print as decimal
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.binary(max_size=30),
)
cbor_values = st.recursive(
    _cbor_leaf,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["t", "id", "op", "args", "sid", "errno", "msg", "tok"]) | st.text(max_size=5),
            children,
            max_size=5,
        )
    ),
    max_leaves=12,
)
control_maps = st.fixed_dictionaries(
    {},
    optional={
        "t": st.sampled_from(["hello", "req", "ok", "err", "close", "ping", "pong", "bogus"]) | cbor_values,
        "id": cbor_values,
        "op": st.text(max_size=10) | cbor_values,
        "args": cbor_values,
        "sid": st.integers(min_value=0, max_value=5) | cbor_values,
        "errno": cbor_values,
        "msg": cbor_values,
        "tok": cbor_values,
        "v": cbor_values,
        "win": cbor_values,
    },
)
random_frames = st.one_of(
    control_maps.map(control),
    cbor_values.map(control),
    st.tuples(st.sampled_from(p._KINDS), st.integers(0, 5), st.binary(max_size=64)).map(lambda t: raw(*t)),
    st.tuples(st.integers(0, 255), st.integers(0, 2**32 - 1), st.binary(max_size=16)).map(lambda t: raw(*t)),
    st.binary(max_size=20),
)


def _check_events(events: list[p.Event]) -> None:
    assert all(isinstance(e, p.Event) for e in events)
    fails = [i for i, e in enumerate(events) if isinstance(e, p.ConnectionFailed)]
    assert fails in ([], [len(events) - 1]), "ConnectionFailed must be the last event"


@given(data=st.binary(max_size=2000), fresh=st.booleans())
@settings(max_examples=300, deadline=None)
def test_fuzz_arbitrary_bytes_never_raise(data, fresh):
    if fresh:
        conn = p.Connection("agent")
    else:
        _a, conn = pair()
        conn.open_stream(SID)
    events = conn.receive_data(data)
    _check_events(events)
    conn.data_to_send()
    if any(isinstance(e, p.ConnectionFailed) for e in events):
        assert conn.receive_data(data + control({"t": "ping", "tok": 1})) == []


@given(chunks=st.lists(random_frames, max_size=12), open_streams=st.booleans())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_random_frames_after_hello_never_raise(chunks, open_streams):
    a, b = pair(agent_window=1024)
    if open_streams:
        open_both(a, b, 1)
        open_both(a, b, 2)
    failed = False
    for chunk in chunks:
        events = b.receive_data(chunk)
        _check_events(events)
        if failed:
            assert events == []
        failed = failed or any(isinstance(e, p.ConnectionFailed) for e in events)
        # whatever b answers is valid protocol for its peer
        for ev in a.receive_data(b.data_to_send()):
            assert not isinstance(ev, p.ConnectionFailed)


# A sender-side program: every step is something a correct sender may do; the receiver must see exactly
# the bytes sent on each stream, in order, however the byte stream is cut.
_sid = st.integers(1, 3)
_ops = st.one_of(
    st.tuples(st.just("open"), _sid),
    st.tuples(st.just("data"), _sid, st.binary(min_size=1, max_size=700)),
    st.tuples(st.just("credit"), _sid, st.integers(1, 3000)),
    st.tuples(st.just("eof"), _sid),
    st.tuples(st.just("peer_eof"), _sid),
    st.tuples(st.just("close"), _sid, st.sampled_from([None, "ECONNRESET", "EPIPE"])),
    st.tuples(st.just("request"), st.text(max_size=8)),
    st.tuples(st.just("deliver"), st.integers(0, 5000)),
)


@given(ops=st.lists(_ops, min_size=10, max_size=80), window=st.integers(1024, 3000))
@example(
    ops=[("open", 1), ("data", 1, b"a" * 600), ("credit", 1, 100), ("data", 1, b"b" * 700), ("data", 1, b"c" * 700)],
    window=1024,
)
@settings(max_examples=300, deadline=None)
def test_fuzz_valid_operations_deliver_exactly_what_was_sent(ops, window):
    a, b = pair(agent_window=window)
    sent: dict[int, bytearray] = {}
    got: dict[int, bytearray] = {}
    credited: dict[int, int] = {}  # credit the receiver returned on each stream
    ended: dict[int, list[type]] = {}  # how the receiver saw each stream end
    requests_sent: list[tuple[int, str]] = []
    requests_got: list[tuple[int, str]] = []
    wire = bytearray()

    def deliver(n: int | None = None) -> None:
        wire.extend(a.data_to_send())
        n = len(wire) if n is None else min(n, len(wire))
        chunk = bytes(wire[:n])
        del wire[:n]
        for ev in b.receive_data(chunk):
            assert not isinstance(ev, p.ConnectionFailed)
            if isinstance(ev, p.Data):
                assert p.StreamClosed not in ended[ev.stream] and p.StreamEof not in ended[ev.stream]
                got[ev.stream].extend(ev.data)
            elif isinstance(ev, p.Request):
                requests_got.append((ev.id, ev.op))
            elif isinstance(ev, (p.StreamEof, p.StreamClosed)):
                assert p.StreamClosed not in ended[ev.stream], "event after a stream was closed"
                ended[ev.stream].append(type(ev))
        for ev in a.receive_data(b.data_to_send()):
            assert not isinstance(ev, (p.ConnectionFailed, p.ErrorReply))

    for op in ops:
        kind = op[0]
        if kind == "open":
            sid = op[1]
            if a.is_open(sid) or b.is_open(sid):
                continue
            deliver()  # everything of the previous stream with this id is through: check it, then reuse
            if sid in sent:
                assert got[sid] == sent[sid]
            a.open_stream(sid)
            b.open_stream(sid)
            sent[sid], got[sid], credited[sid], ended[sid] = bytearray(), bytearray(), 0, []
        elif kind == "data":
            sid, data = op[1], op[2]
            if not a.is_open(sid) or a._streams[sid].sent_eof:
                with pytest.raises(ValueError):
                    a.send_data(sid, data)
                continue
            window_now = a.send_window(sid)
            assert window_now == window + credited[sid] - len(sent[sid])
            if len(data) > window_now:
                with pytest.raises(p.FlowControlError):
                    a.send_data(sid, data)
                data = data[:window_now]
            if data:
                a.send_data(sid, data)
                sent[sid].extend(data)
        elif kind == "credit":
            sid, amount = op[1], op[2]
            deliver()
            if b.is_open(sid):
                # a receiver returns at most the bytes it has handed on, like a relay does
                amount = min(amount, len(got[sid]) - credited[sid])
                if amount > 0:
                    b.send_credit(sid, amount)
                    assert a.receive_data(b.data_to_send()) == [p.Credit(sid, amount)]
                    credited[sid] += amount
        elif kind == "eof":
            if a.is_open(op[1]):
                a.send_eof(op[1])
        elif kind == "peer_eof":
            sid = op[1]
            if b.is_open(sid) and not b._streams[sid].sent_eof:
                expected = [p.StreamEof(sid)] if a.is_open(sid) else []  # a may have closed it already
                b.send_eof(sid)
                assert a.receive_data(b.data_to_send()) == expected
        elif kind == "close":
            sid = op[1]
            if a.is_open(sid):
                a.send_close(sid, op[2], "closed by test")
        elif kind == "request":
            requests_sent.append((a.send_request(op[1]), op[1]))
        else:
            deliver(op[1])
        for sid in sent:  # every prefix the receiver has seen is a prefix of what was sent
            assert bytes(got[sid]) == bytes(sent[sid][: len(got[sid])])
    deliver()
    for sid in sent:
        assert got[sid] == sent[sid]
        if not a.is_open(sid) and not b.is_open(sid):
            assert ended[sid], "the receiver must learn that the stream ended"
    assert requests_got == requests_sent
