"""Mirroring by packet capture: a copy of what clients send to a port, taken off the wire, never off the path.

Why capture rather than a proxy: the target's clients must not notice mirroring. A packet socket only reads
copies of packets the kernel has already received, so the connection still goes client -> the pod's app with
no extra hop, its latency and capacity are the pod's own, and if the agent is slow or dies nothing changes
for the client — the copy is what suffers (the kernel drops packets for a full capture buffer, which the
agent counts). A passthrough proxy (iptables REDIRECT to the agent, which forwards to the app) would put the
agent on every byte's path: its CPU, its buffers and its life would become the service's.

The kernel does the selecting: each captured port gets two ``AF_PACKET`` ``SOCK_DGRAM`` sockets (IPv4 and
IPv6 by protocol, which see received packets only, once each, loopback included) with a classic BPF program
that passes TCP segments to that destination port and nothing else. Only the client-to-server half is
captured: the local app's replies are discarded anyway.

:class:`Reassembler` turns those segments back into per-connection byte streams (sequence numbers,
retransmissions, reordering, FIN and RST); it is pure and tested with made-up segments. Connections that
were already open when the capture started are not mirrored: their start is unknown.

Standard library only, Python 3.9+.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from dataclasses import dataclass, field

from .budget import Budget

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SOL_PACKET = 263
PACKET_STATISTICS = 6
SNAPLEN = 256 * 1024  # GRO/GSO can hand over segments of up to 64 KiB (more with BIG TCP)

MAX_PENDING = 4 << 20  # out-of-order bytes held per connection before it is given up (the total: the budget)
IDLE_TIMEOUT = 600.0  # a connection silent this long is forgotten (its FIN may have been lost)
MAX_FLOWS = 20000

_MASK = 0xFFFFFFFF
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10


# ---------------------------------------------------------------------------------------------- packets
class Segment:
    """One captured TCP segment. ``key`` is the connection's raw addresses (client IP, server IP, client port,
    server port, as on the wire): hashing a few bytes is the cheapest way to find the connection, and text
    addresses are only made for a new connection."""

    __slots__ = ("flags", "key", "payload", "seq")

    def __init__(self, key: bytes, seq: int, flags: int, payload: bytes) -> None:
        self.key = key
        self.seq = seq
        self.flags = flags
        self.payload = payload

    @property
    def src(self) -> tuple:
        """(ip, port) of the client."""
        return addresses(self.key)[0]

    @property
    def dst(self) -> tuple:
        """(ip, port) it connected to."""
        return addresses(self.key)[1]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Segment) and (self.key, self.seq, self.flags, self.payload) == (
            other.key, other.seq, other.flags, other.payload)

    def __repr__(self) -> str:
        return f"Segment({self.src}, {self.dst}, seq={self.seq}, flags={self.flags:#x}, {len(self.payload)} bytes)"


def segment(src: tuple, dst: tuple, seq: int, flags: int, payload: bytes = b"") -> Segment:
    """A segment from text addresses (tests, and anything that did not come off the wire)."""
    family = socket.AF_INET6 if ":" in src[0] else socket.AF_INET
    key = (socket.inet_pton(family, src[0]) + socket.inet_pton(family, dst[0])
           + struct.pack("!HH", src[1], dst[1]))
    return Segment(key, seq, flags, payload)


def addresses(key: bytes) -> tuple[tuple, tuple]:
    """The (ip, port) of the client and of the server, from a segment's key."""
    n = (len(key) - 4) // 2
    family = socket.AF_INET if n == 4 else socket.AF_INET6
    sport, dport = struct.unpack_from("!HH", key, 2 * n)
    return (socket.inet_ntop(family, key[:n]), sport), (socket.inet_ntop(family, key[n : 2 * n]), dport)


_V4 = struct.Struct("!HHHBB")  # total length, id, flags+fragment offset, ttl, protocol (from offset 2)
_TCP = struct.Struct("!4sI4xBB")  # ports, sequence number, (ack), data offset, flags


def parse_packet(data: bytes | bytearray | memoryview) -> Segment | None:
    """An IPv4 or IPv6 TCP segment (network header first, as a SOCK_DGRAM packet socket gives it), or None.
    It runs for every captured packet, so it does as little as it can."""
    size = len(data)
    if size < 40:
        return None
    b0 = data[0]
    if b0 >> 4 == 4:
        start = (b0 & 0x0F) * 4
        total, _, frag, _, proto = _V4.unpack_from(data, 2)
        if proto != 6 or start < 20 or frag & 0x3FFF or total < start + 20 or size < start + 20:
            return None  # not TCP, or a fragment (not reassembled here)
        addrs = data[12:20]
        end = total if total < size else size
    elif b0 >> 4 == 6:
        if size < 60 or data[6] != 6:  # extension headers are not followed
            return None
        start = 40
        addrs = data[8:40]
        end = min(40 + ((data[4] << 8) | data[5]), size)
    else:
        return None
    ports, seq, off, flags = _TCP.unpack_from(data, start)
    hl = (off >> 4) * 4
    if hl < 20 or start + hl > end:
        return None
    return Segment(bytes(addrs) + ports, seq, flags, bytes(data[start + hl : end]))


def _after(a: int, b: int) -> int:
    """a - b in sequence space (negative when a is before b)."""
    d = (a - b) & _MASK
    return d - (1 << 32) if d >= 1 << 31 else d


# ------------------------------------------------------------------------------------------- reassembly
@dataclass
class Opened:
    key: bytes
    peer: tuple
    local: tuple


@dataclass
class Bytes:
    key: bytes
    data: bytes


@dataclass
class Closed:
    key: bytes
    reset: bool  # False: the client finished sending (FIN); True: reset, or the copy could not go on
    reason: str = ""


@dataclass
class _Flow:
    isn: int
    next: int
    opened: bool = False
    fin: int | None = None
    pending: dict = field(default_factory=dict)  # seq -> bytes, ahead of ``next``
    pending_bytes: int = 0
    seen: float = 0.0


class Reassembler:
    """Client-to-server byte streams of the connections that start while it runs.

    Out-of-order bytes are held until the gap before them fills. The capture sees segments before TCP has
    validated them, so anyone can send bytes "ahead" on thousands of connections: what all flows hold
    together is charged to the agent's ``budget``. When a segment does not fit, the flows holding the most
    are cut first (a flow with a large gap is the likeliest lost anyway, and cutting it frees the most),
    then the flow itself if it still does not fit."""

    def __init__(self, max_pending: int = MAX_PENDING, idle_timeout: float = IDLE_TIMEOUT,
                 max_flows: int = MAX_FLOWS, budget: Budget | None = None) -> None:
        self.flows: dict[bytes, _Flow] = {}
        self.max_pending = max_pending
        self.idle_timeout = idle_timeout
        self.max_flows = max_flows
        self.budget = budget if budget is not None else Budget()
        self._holding: dict[bytes, _Flow] = {}  # the flows with out-of-order bytes, for eviction
        self.held = 0  # out-of-order bytes held by all flows together
        self.midstream = 0  # segments of connections whose start was not seen

    def feed(self, seg: Segment, now: float = 0.0) -> list:
        key = seg.key
        flow = self.flows.get(key)
        out: list = []
        if seg.flags & SYN and not seg.flags & ACK:
            if flow is not None:
                if flow.isn == seg.seq:
                    flow.seen = now
                    return out  # a retransmitted SYN
                self._end(key, True, "the client reused the address for a new connection", out)
            if len(self.flows) >= self.max_flows:
                oldest = min(self.flows, key=lambda k: self.flows[k].seen)
                self._end(oldest, True, "too many connections to mirror at once", out)
            flow = _Flow(seg.seq, (seg.seq + 1) & _MASK, seen=now)
            self.flows[key] = flow
            if seg.payload:  # TCP Fast Open: data in the SYN
                self._hold(key, flow, flow.next, seg.payload, out)
            return out
        if flow is None:
            if seg.payload:
                self.midstream += 1  # bytes of a connection whose start was not seen
            return out
        flow.seen = now
        if seg.flags & RST:
            self._end(key, True, "the client reset the connection", out)
            return out
        if not flow.opened:
            flow.opened = True
            peer, local = addresses(key)
            out.append(Opened(key, peer, local))
            self._drain(key, flow, out)  # TCP Fast Open data from the SYN
        if seg.payload:
            self._data(key, flow, seg.seq, seg.payload, out)
        if seg.flags & FIN:
            fin = (seg.seq + len(seg.payload)) & _MASK
            flow.fin = fin
        if key in self.flows and flow.fin is not None and flow.next == flow.fin:
            self._end(key, False, "", out)
        return out

    def _data(self, key: bytes, flow: _Flow, seq: int, payload: bytes, out: list) -> None:
        ahead = _after(seq, flow.next)
        if ahead > 0:
            self._hold(key, flow, seq, payload, out)
            return
        if -ahead >= len(payload):
            return  # a retransmission of bytes already delivered
        out.append(Bytes(key, payload[-ahead:]))
        flow.next = (seq + len(payload)) & _MASK
        self._drain(key, flow, out)

    def _hold(self, key: bytes, flow: _Flow, seq: int, payload: bytes, out: list) -> None:
        """Keeps a segment that is ahead of the stream, within the flow's limit and the agent's budget."""
        grow = len(payload) - len(flow.pending.get(seq, b""))
        if grow <= 0:
            return  # a retransmission of held bytes
        if flow.pending_bytes + grow > self.max_pending:
            self._end(key, True, "a gap in the captured bytes did not fill (capture buffer overrun?)", out)
            return
        budget = self.budget
        if budget.used() - self.held + flow.pending_bytes + grow > budget.limit:
            self._cut(key, out)  # it would not fit with every other flow cut: cutting them would only add losses
            return
        while not budget.take(grow):
            victim = max(self._holding, key=lambda k: self._holding[k].pending_bytes, default=None)
            if victim is None or victim == key:
                self._cut(key, out)
                return
            self._cut(victim, out)
        flow.pending[seq] = payload
        flow.pending_bytes += grow
        self.held += grow
        self._holding[key] = flow

    def _cut(self, key: bytes, out: list) -> None:
        self.budget.count("flows_cut")
        self._end(key, True, "out-of-order bytes over the agent's memory budget", out)

    def _drain(self, key: bytes, flow: _Flow, out: list) -> None:
        """Delivers the held segments that the stream has caught up with."""
        progressed = True
        while flow.pending and progressed:
            progressed = False
            for pseq in list(flow.pending):
                off = _after(pseq, flow.next)
                if off > 0:
                    continue
                chunk = flow.pending.pop(pseq)
                flow.pending_bytes -= len(chunk)
                self.held -= len(chunk)
                self.budget.release(len(chunk))
                if -off < len(chunk):
                    out.append(Bytes(key, chunk[-off:]))
                    flow.next = (pseq + len(chunk)) & _MASK
                progressed = True
        if not flow.pending:
            self._holding.pop(key, None)

    def _end(self, key: bytes, reset: bool, reason: str, out: list) -> None:
        flow = self._remove(key)
        if flow is not None and flow.opened:
            out.append(Closed(key, reset, reason))

    def _remove(self, key: bytes) -> _Flow | None:
        flow = self.flows.pop(key, None)
        if flow is not None and self._holding.pop(key, None) is not None:
            self.budget.release(flow.pending_bytes)
            self.held -= flow.pending_bytes
            flow.pending.clear()
            flow.pending_bytes = 0
        return flow

    def expire(self, now: float) -> list:
        """Forgets connections idle for longer than the timeout (their end was not captured)."""
        out: list = []
        for key in [k for k, f in self.flows.items() if now - f.seen > self.idle_timeout]:
            self._end(key, False, "", out)
        return out

    def forget(self, key: bytes) -> None:
        self._remove(key)

    def clear(self) -> None:
        """Forgets every flow (the capture stopped), giving their held bytes back to the budget."""
        for key in list(self.flows):
            self._remove(key)


# ------------------------------------------------------------------------------------------ the sockets
# Classic BPF, as the kernel takes it (struct sock_filter): code, jt, jf, k.
_LD_B, _LD_H, _LD_W_ABS, _LDX_MSH, _LD_H_IND, _LD_B_IND = 0x30, 0x28, 0x20, 0xB1, 0x48, 0x50
_JEQ, _JSET, _JGT_X, _RET = 0x15, 0x45, 0x2D, 0x06
_RSH, _LSH, _ADD_X, _TAX = 0x74, 0x64, 0x0C, 0x07
_SKF_AD_MARK = (-0x1000 + 8) & _MASK
_KEEP_FLAGS = FIN | SYN | RST


def bpf_program(port: int, family: int, skip_mark: int = 0) -> list[tuple[int, int, int, int]]:
    """Pass TCP segments to ``port`` that carry data, SYN, FIN or RST (first fragments only, IPv4 options
    allowed); drop the rest — pure ACKs are most of a busy port's packets and tell the copy nothing — and any
    packet whose socket mark has a bit of ``skip_mark`` (the agent's own forwarded connections)."""
    prog: list[tuple[int, int, int, int]] = []
    if skip_mark:
        prog += [(_LD_W_ABS, 0, 0, _SKF_AD_MARK), (_JSET, 0, 1, skip_mark), (_RET, 0, 0, 0)]
    if family == socket.AF_INET:
        prog += [
            (_LD_B, 0, 0, 9), (_JEQ, 0, 15, 6),  # 0-1: protocol TCP
            (_LD_H, 0, 0, 6), (_JSET, 13, 0, 0x1FFF),  # 2-3: not a later fragment
            (_LDX_MSH, 0, 0, 0), (_LD_H_IND, 0, 0, 2),  # 4-5: x = IP header length; the destination port
            (_JEQ, 0, 10, port),  # 6
            (_LD_B_IND, 0, 0, 13), (_JSET, 7, 0, _KEEP_FLAGS),  # 7-8: SYN, FIN or RST: keep
            (_LD_B_IND, 0, 0, 12), (_RSH, 0, 0, 4), (_LSH, 0, 0, 2),  # 9-11: TCP header length
            (_ADD_X, 0, 0, 0), (_TAX, 0, 0, 0), (_LD_H, 0, 0, 2),  # 12-14: headers vs total length
            (_JGT_X, 0, 1, 0),  # 15: any payload: keep
            (_RET, 0, 0, SNAPLEN), (_RET, 0, 0, 0),  # 16 keep, 17 drop
        ]
    else:
        prog += [
            (_LD_B, 0, 0, 6), (_JEQ, 0, 11, 6),  # 0-1: next header TCP
            (_LD_H, 0, 0, 42), (_JEQ, 0, 9, port),  # 2-3: the destination port
            (_LD_B, 0, 0, 53), (_JSET, 6, 0, _KEEP_FLAGS),  # 4-5: SYN, FIN or RST: keep
            (_LD_B, 0, 0, 52), (_RSH, 0, 0, 4), (_LSH, 0, 0, 2), (_TAX, 0, 0, 0),  # 6-9: TCP header length
            (_LD_H, 0, 0, 4), (_JGT_X, 0, 1, 0),  # 10-11: payload length beyond it: keep
            (_RET, 0, 0, SNAPLEN), (_RET, 0, 0, 0),  # 12 keep, 13 drop
        ]
    return prog


def _attach(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    code = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies the program


def open_capture(port: int, skip_mark: int = 0, rcvbuf: int = 32 << 20) -> list[socket.socket]:
    """The packet sockets that see every TCP segment received for ``port`` in this network namespace.

    Raises PermissionError without CAP_NET_RAW. IPv6 is skipped where the kernel has none.
    """
    socks = []
    for family, proto in ((socket.AF_INET, ETH_P_IP), (socket.AF_INET6, ETH_P_IPV6)):
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(proto))
        except PermissionError:
            for s in socks:
                s.close()
            raise
        except OSError:
            if family == socket.AF_INET:
                raise
            continue
        try:
            _attach(sock, bpf_program(port, family, skip_mark))
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            # Packets queued between socket() and the filter's attachment may be anything: drain them.
            sock.setblocking(False)
            while True:
                try:
                    sock.recv(1)
                except BlockingIOError:
                    break
        except BaseException:
            sock.close()
            for s in socks:
                s.close()
            raise
        socks.append(sock)
    return socks


def dropped(sock: socket.socket) -> int:
    """Packets the kernel dropped for this socket since the last call (its buffer was full)."""
    try:
        raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
    except OSError:
        return 0
    return struct.unpack("II", raw)[1]
