"""Incoming traffic in the agent, without sockets: the protocol's agent-opened streams, HTTP/1.x framing and the
request filter, TCP segment parsing and reassembly for mirroring, and the marks that order stealing chains."""

from __future__ import annotations

import socket
import struct

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirror_py_agent import capture, http1, incoming, iptables
from mirror_py_agent import protocol as p


# ----------------------------------------------------------------------------------------------- protocol
def pair():
    a = p.Connection("session")
    b = p.Connection("agent")
    a.send_hello()
    b.send_hello()
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())
    return a, b


def control(msg: dict) -> bytes:
    payload = cbor2.dumps(msg)
    return p.HEADER.pack(p.CONTROL, 0, len(payload)) + payload


def test_accept_opens_an_agent_stream_and_data_right_behind_it_arrives():
    session, agent = pair()
    agent.send_accept(2, 7, ("10.0.0.9", 40000), ("10.244.1.2", 8080))
    agent.send_data(2, b"GET / HTTP/1.1\r\n\r\n")
    agent.send_eof(2)
    events = session.receive_data(agent.data_to_send())
    assert events == [
        p.Accept(2, 7, ("10.0.0.9", 40000), ("10.244.1.2", 8080)),
        p.Data(2, b"GET / HTTP/1.1\r\n\r\n"),
        p.StreamEof(2),
    ]
    # The stream is an ordinary one from here: credit, replies and close work both ways.
    session.send_credit(2, 18)
    session.send_data(2, b"HTTP/1.1 200 OK\r\n")
    session.send_close(2, "ECONNREFUSED", "nobody listens")
    events = agent.receive_data(session.data_to_send())
    assert [type(e) for e in events] == [p.Credit, p.Data, p.StreamClosed]
    assert events[2].errno == "ECONNREFUSED"
    assert not agent.is_open(2) and not session.is_open(2)


@pytest.mark.parametrize("sid", [0, 1, 3, -2, 1 << 32, True])
def test_only_even_ids_are_the_agents(sid):
    _, agent = pair()
    with pytest.raises(ValueError):
        agent.send_accept(sid, 1, ("a", 1), ("b", 2))
    session, _ = pair()
    session.receive_data(control({"t": "accept", "sid": sid, "sub": 1, "peer": ["a", 1], "local": ["b", 2]}))
    errs = _errors(session)
    assert errs and errs[0].errno == "EINVAL"


def test_the_session_never_opens_incoming_streams():
    session, agent = pair()
    with pytest.raises(ValueError):
        session.send_accept(2, 1, ("a", 1), ("b", 2))
    events = agent.receive_data(control({"t": "accept", "sid": 2, "sub": 1, "peer": ["a", 1], "local": ["b", 2]}))
    assert events == []
    assert _errors(agent)[0].errno == "EINVAL"
    assert not agent.is_open(2)


@pytest.mark.parametrize("msg", [
    {"t": "accept", "sid": 2, "sub": "1", "peer": ["a", 1], "local": ["b", 2]},
    {"t": "accept", "sid": 2, "sub": 1, "peer": ["a"], "local": ["b", 2]},
    {"t": "accept", "sid": 2, "sub": 1, "peer": ["a", 70000], "local": ["b", 2]},
    {"t": "accept", "sid": 2, "sub": 1, "peer": [1, 2], "local": ["b", 2]},
    {"t": "accept", "sid": 2, "sub": 1, "peer": ["a", 1]},
])
def test_malformed_accepts_are_errors_not_crashes(msg):
    session, _ = pair()
    assert session.receive_data(control(msg)) == []
    assert _errors(session)[0].errno == "EINVAL"
    assert not session.is_open(2)


def test_a_second_accept_on_an_open_stream_is_refused():
    session, agent = pair()
    agent.send_accept(4, 1, ("a", 1), ("b", 2))
    session.receive_data(agent.data_to_send())
    msg = control({"t": "accept", "sid": 4, "sub": 1, "peer": ["a", 1], "local": ["b", 2]})
    assert session.receive_data(msg) == []
    assert _errors(session)[0].errno == "EINVAL"


def _errors(conn: p.Connection) -> list[p.ErrorReply]:
    peer = p.Connection("peer")
    peer.receive_data(control({"t": "hello", "v": p.PROTOCOL_VERSION}))
    return [e for e in peer.receive_data(conn.data_to_send()) if isinstance(e, p.ErrorReply)]


# --------------------------------------------------------------------------------------------------- HTTP
@pytest.mark.parametrize("prefix,verdict", [
    (b"", None),
    (b"GE", None),
    (b"GET /path?x=1 HTTP/1.1\r\n", True),
    (b"POST / HTTP/1.0\n", True),
    (b"\x16\x03\x01\x02\x00", False),  # TLS
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", False),  # HTTP/2 prior knowledge
    (b"SSH-2.0-OpenSSH\r\n", False),
    (b"GET / HTTP/2\r\n", False),
    (b"hello", False),
    (b"GET", None),
    (b"GET /" + b"a" * 9000, False),
])
def test_http1_detection(prefix, verdict):
    assert http1.looks_like_http1(prefix) is verdict


def test_request_head_parsing():
    raw = b"POST http://h/a/b?x=1 HTTP/1.1\r\nHost: h\r\nX-User:  me \r\nTransfer-Encoding: gzip, chunked\r\n\r\nrest"
    head, n = http1.parse_request_head(raw)
    assert raw[n:] == b"rest" and head.raw == raw[:n]
    assert (head.method, head.path, head.minor) == ("POST", "/a/b", 1)
    assert head.header_lines() == ["Host: h", "X-User: me", "Transfer-Encoding: gzip, chunked"]
    assert head.body() == ("chunked", 0)
    assert http1.parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\n") is None
    head, _ = http1.parse_request_head(b"GET /x HTTP/1.1\nContent-Length: 3\n\n")
    assert head.body() == ("length", 3)
    for bad in (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", b"GET / HTTP/1.1\r\n folded\r\n\r\n",
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"):
        with pytest.raises(http1.HttpError):
            http1.parse_request_head(bad)[0].body()
    with pytest.raises(http1.HttpError):
        http1.parse_request_head(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 20000)


@pytest.mark.parametrize("method,status,headers,framing", [
    ("GET", 200, "Content-Length: 5", ("length", 5)),
    ("HEAD", 200, "Content-Length: 5", ("none", 0)),
    ("GET", 204, "", ("none", 0)),
    ("GET", 304, "Content-Length: 5", ("none", 0)),
    ("GET", 100, "", ("none", 0)),
    ("GET", 200, "Transfer-Encoding: chunked", ("chunked", 0)),
    ("GET", 200, "", ("close", 0)),
    ("CONNECT", 200, "", ("close", 0)),
])
def test_response_framing(method, status, headers, framing):
    raw = f"HTTP/1.1 {status} X\r\n{headers}\r\n\r\n".encode() if headers else f"HTTP/1.1 {status} X\r\n\r\n".encode()
    head, _ = http1.parse_response_head(raw)
    assert head.body(method) == framing


def test_response_keep_alive_rules():
    def closes(raw: bytes) -> bool:
        return http1.parse_response_head(raw)[0].closes

    assert not closes(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert closes(b"HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n")
    assert closes(b"HTTP/1.0 200 OK\r\n\r\n")
    assert not closes(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n")


CHUNKED = b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: t\r\n\r\n"


@given(st.lists(st.integers(1, len(CHUNKED)), max_size=12), st.binary(max_size=20))
@settings(max_examples=200, deadline=None)
def test_chunked_body_ends_where_it_ends_however_it_is_split(cuts, after):
    data = CHUNKED + after
    framer = http1.BodyFramer("chunked")
    taken = 0
    points = sorted(set(cuts)) + [len(data)]
    start = 0
    for end in points:
        piece = data[start:end]
        n = framer.feed(piece)
        taken += n
        if framer.done:
            break
        assert n == len(piece)
        start = end
    assert framer.done and taken == len(CHUNKED)


def test_length_and_close_framing():
    f = http1.BodyFramer("length", 5)
    assert f.feed(b"abc") == 3 and not f.done
    assert f.feed(b"defg") == 2 and f.done
    assert http1.BodyFramer("length", 0).done and http1.BodyFramer("none").done
    f = http1.BodyFramer("close")
    assert f.feed(b"x" * 100) == 100 and not f.done
    with pytest.raises(http1.HttpError):
        http1.BodyFramer("chunked").feed(b"zz\r\n")


def _head(raw: bytes) -> http1.RequestHead:
    return http1.parse_request_head(raw + b"\r\n")[0]


def test_filter_header_path_method_and_combinations():
    req = _head(b"POST /api/items?id=3 HTTP/1.1\r\nHost: x\r\nX-User: Me\r\n")
    assert http1.HttpFilter({"header": "^x-user: me$"}).matches(req)
    assert not http1.HttpFilter({"header": "^x-user: you$"}).matches(req)
    assert http1.HttpFilter({"path": "^/api/items$"}).matches(req)  # the query is not part of the path
    assert http1.HttpFilter({"method": "^post$"}).matches(req)
    assert http1.HttpFilter({"all_of": [{"method": "POST"}, {"path": "^/api"}]}).matches(req)
    assert not http1.HttpFilter({"all_of": [{"method": "GET"}, {"path": "^/api"}]}).matches(req)
    assert http1.HttpFilter({"any_of": [{"method": "GET"}, {"header": "x-user"}]}).matches(req)
    assert not http1.HttpFilter({"any_of": [{"method": "GET"}, {"path": "^/other"}]}).matches(req)
    assert not http1.HttpFilter({"header": "^x-user: me$", "method": "GET"}).matches(req)  # every key must match
    nested = {"any_of": [{"all_of": [{"method": "GET"}]}, {"all_of": [{"header": "host: x"}, {"path": "items"}]}]}
    assert http1.HttpFilter(nested).matches(req)
    for bad in ({}, {"any_of": []}, {"header": "("}, {"nope": "x"}, {"all_of": [{}]}):
        with pytest.raises((ValueError, TypeError)):
            http1.HttpFilter(bad)


# ----------------------------------------------------------------------------------------------- capture
def _ipv4(src: str, dst: str, sport: int, dport: int, seq: int, flags: int, payload: bytes = b"",
          options: bytes = b"") -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0) + payload
    ihl = 5 + len(options) // 4
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(tcp), 1, 0, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst)) + options
    return ip + tcp + b"\0" * 6  # ethernet padding after the datagram


def _ipv6(src: str, dst: str, sport: int, dport: int, seq: int, flags: int, payload: bytes = b"") -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0) + payload
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, socket.inet_pton(socket.AF_INET6, src),
                     socket.inet_pton(socket.AF_INET6, dst))
    return ip + tcp


def test_parse_ipv4_and_ipv6_segments():
    seg = capture.parse_packet(_ipv4("10.0.0.1", "10.0.0.2", 4000, 8080, 77, capture.ACK, b"data", b"\x01" * 4))
    assert seg == capture.segment(("10.0.0.1", 4000), ("10.0.0.2", 8080), 77, capture.ACK, b"data")
    assert (seg.src, seg.dst) == (("10.0.0.1", 4000), ("10.0.0.2", 8080))
    seg = capture.parse_packet(_ipv6("fd00::1", "fd00::2", 4000, 8080, 5, capture.SYN))
    assert seg.src == ("fd00::1", 4000) and seg.flags == capture.SYN and seg.payload == b""
    frag = bytearray(_ipv4("10.0.0.1", "10.0.0.2", 1, 2, 0, 0, b"x"))
    frag[6:8] = struct.pack("!H", 0x2000)  # more fragments
    assert capture.parse_packet(bytes(frag)) is None
    udp = bytearray(_ipv4("10.0.0.1", "10.0.0.2", 1, 2, 0, 0))
    udp[9] = 17
    assert capture.parse_packet(bytes(udp)) is None
    assert capture.parse_packet(b"\x45\x00") is None


def _segments(data: bytes, isn: int, size: int) -> list[capture.Segment]:
    src, dst = ("10.0.0.1", 5555), ("10.0.0.2", 8080)
    out = [capture.segment(src, dst, isn, capture.SYN, b""), capture.segment(src, dst, isn + 1, capture.ACK, b"")]
    for off in range(0, len(data), size):
        out.append(capture.segment(src, dst, (isn + 1 + off) & 0xFFFFFFFF, capture.ACK, data[off : off + size]))
    out.append(capture.segment(src, dst, (isn + 1 + len(data)) & 0xFFFFFFFF, capture.FIN | capture.ACK, b""))
    return out


def _replay(reasm: capture.Reassembler, segs: list[capture.Segment]) -> tuple[bytes, list]:
    got, ends = b"", []
    for seg in segs:
        for ev in reasm.feed(seg):
            if isinstance(ev, capture.Bytes):
                got += ev.data
            elif isinstance(ev, capture.Closed):
                ends.append(ev)
    return got, ends


@given(st.binary(min_size=1, max_size=3000), st.integers(0, 0xFFFFFFFF), st.integers(1, 700), st.randoms())
@settings(max_examples=150, deadline=None)
def test_reassembly_survives_reordering_duplicates_and_sequence_wrap(data, isn, size, rnd):
    segs = _segments(data, isn, size)
    body = segs[2:-1]
    # Retransmissions, overlapping re-segmentation and local reordering, as a capture may see them.
    body += [body[rnd.randrange(len(body))] for _ in range(min(3, len(body)))]
    if len(data) > 2:
        cut = rnd.randrange(1, len(data))
        body.append(capture.segment(segs[0].src, segs[0].dst, (isn + 1 + cut - 1) & 0xFFFFFFFF, capture.ACK,
                                    data[cut - 1 : cut + 1]))
    for i in range(len(body) - 1):
        if rnd.random() < 0.3:
            body[i], body[i + 1] = body[i + 1], body[i]
    got, ends = _replay(capture.Reassembler(), segs[:2] + body + segs[-1:])
    assert got == data
    assert [e.reset for e in ends] == [False]


def test_reassembly_events_and_edge_cases():
    reasm = capture.Reassembler()
    segs = _segments(b"hello world", 100, 4)
    events = [ev for seg in segs for ev in reasm.feed(seg)]
    assert isinstance(events[0], capture.Opened) and events[0].peer == ("10.0.0.1", 5555)
    assert isinstance(events[-1], capture.Closed) and not events[-1].reset
    assert reasm.flows == {}
    # A connection whose SYN was not seen (it started before the capture) is not mirrored.
    mid = capture.Reassembler()
    assert _replay(mid, segs[2:]) == (b"", []) and mid.midstream == 3
    # RST ends a copy as a reset.
    r = capture.Reassembler()
    _replay(r, segs[:3])
    (closed,) = r.feed(capture.segment(segs[0].src, segs[0].dst, 105, capture.RST, b""))
    assert closed.reset
    # A gap that never fills gives the copy up, bounded.
    g = capture.Reassembler(max_pending=10)
    _replay(g, segs[:2])
    assert g.feed(capture.segment(segs[0].src, segs[0].dst, 200, capture.ACK, b"x" * 11))[0].reset
    # A new SYN on the same addresses ends the old copy; TCP Fast Open data in the SYN is kept.
    t = capture.Reassembler()
    _replay(t, segs[:3])
    src, dst = segs[0].src, segs[0].dst
    assert t.feed(capture.segment(src, dst, 9000, capture.SYN, b"early"))[0].reset
    got, _ = _replay(t, [capture.segment(src, dst, 9006, capture.ACK, b"late")])
    assert got == b"earlylate"
    # Idle connections are forgotten.
    idle = capture.Reassembler(idle_timeout=5)
    _replay(idle, segs[:3])
    assert idle.expire(now=100.0)[0].reset is False and idle.flows == {}


def _run_bpf(prog: list, packet: bytes, mark: int = 0) -> int:
    """A classic BPF interpreter for the instructions the capture uses: what the kernel would return."""
    a = x = 0
    mem = [0] * 16
    pc = 0
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        if code == 0x20 and k == (-0x1000 + 8) & 0xFFFFFFFF:
            a = mark
        elif code in (0x30, 0x28):  # ld b/h [k]
            size = 1 if code == 0x30 else 2
            a = int.from_bytes(packet[k : k + size], "big")
        elif code in (0x50, 0x48):  # ld b/h [x + k]
            size = 1 if code == 0x50 else 2
            a = int.from_bytes(packet[x + k : x + k + size], "big")
        elif code == 0xB1:
            x = (packet[k] & 0x0F) * 4
        elif code == 0x74:
            a >>= k
        elif code == 0x64:
            a = (a << k) & 0xFFFFFFFF
        elif code == 0x0C:
            a = (a + x) & 0xFFFFFFFF
        elif code == 0x07:
            x = a
        elif code == 0x15:
            pc += jt if a == k else jf
        elif code == 0x45:
            pc += jt if a & k else jf
        elif code == 0x2D:
            pc += jt if a > x else jf
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
        assert pc < len(prog) and mem == [0] * 16


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_the_kernel_filter_passes_what_the_copy_needs_and_nothing_else(family):
    build = _ipv4 if family == socket.AF_INET else _ipv6
    a, b = ("10.0.0.1", "10.0.0.2") if family == socket.AF_INET else ("fd00::1", "fd00::2")
    prog = capture.bpf_program(8080, family, iptables.MARK_BITS)

    def passes(packet: bytes, mark: int = 0) -> bool:
        return _run_bpf(prog, packet, mark) > 0

    assert passes(build(a, b, 4000, 8080, 1, capture.SYN))
    assert passes(build(a, b, 4000, 8080, 1, capture.ACK, b"GET / HTTP/1.1\r\n\r\n"))
    assert passes(build(a, b, 4000, 8080, 1, capture.FIN | capture.ACK))
    assert passes(build(a, b, 4000, 8080, 1, capture.RST))
    assert not passes(build(a, b, 4000, 8080, 1, capture.ACK)), "a pure ACK tells the copy nothing"
    assert not passes(build(a, b, 4000, 8081, 1, capture.ACK, b"data")), "another port"
    assert not passes(build(a, b, 8080, 4000, 1, capture.ACK, b"reply")), "the server's direction"
    assert not passes(build(a, b, 4000, 8080, 1, capture.ACK, b"data"), mark=1 << iptables.MARK_SHIFT)
    if family == socket.AF_INET:
        assert passes(_ipv4(a, b, 4000, 8080, 1, capture.ACK, b"x", options=b"\x01" * 8)), "IP options"
        udp = bytearray(_ipv4(a, b, 4000, 8080, 1, 0, b"x"))
        udp[9] = 17
        assert not passes(bytes(udp))
        frag = bytearray(_ipv4(a, b, 4000, 8080, 1, capture.ACK, b"x"))
        frag[6:8] = b"\x00\x10"  # a later fragment: its "ports" are payload
        assert not passes(bytes(frag))


def test_thermometer_marks_order_the_chains():
    rules = iptables.Rules.__new__(iptables.Rules)
    marks = {}
    for rank in (1, 2, 3):
        rules.rank = rank
        marks[rank] = rules.forward_mark
    bit = {j: 1 << (iptables.MARK_SHIFT + j - 1) for j in (1, 2, 3)}
    # The forwards of rank k skip chains 1..k and meet the ones after.
    for k, mark in marks.items():
        assert [bool(mark & bit[j]) for j in (1, 2, 3)] == [j <= k for j in (1, 2, 3)]
        assert mark & ~iptables.MARK_BITS == 0


@pytest.mark.parametrize("value", [0, -1.5, "30", True, float("inf"), float("nan"), None])
def test_steal_timeouts_from_the_session_are_checked(value):
    with pytest.raises(ValueError, match=r"^steal_timeout must be a positive number of seconds, not "):
        incoming._seconds({"steal_timeout": value}, "steal_timeout", 30.0)
    assert incoming._seconds({}, "steal_timeout", 30.0) == 30.0
    assert incoming._seconds({"steal_timeout": 2}, "steal_timeout", 30.0) == 2.0
