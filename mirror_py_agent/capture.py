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

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SOL_PACKET = 263
PACKET_STATISTICS = 6
SNAPLEN = 256 * 1024  # GRO/GSO can hand over segments of up to 64 KiB (more with BIG TCP)

MAX_PENDING = 4 << 20  # out-of-order bytes held per connection before it is given up
IDLE_TIMEOUT = 600.0  # a connection silent this long is forgotten (its FIN may have been lost)
MAX_FLOWS = 20000

_MASK = 0xFFFFFFFF
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10


# ---------------------------------------------------------------------------------------------- packets
@dataclass
class Segment:
    src: tuple  # (ip, port) of the client
    dst: tuple  # (ip, port) it connected to
    seq: int
    flags: int
    payload: bytes


def parse_packet(data: bytes | memoryview) -> Segment | None:
    """An IPv4 or IPv6 TCP segment (network header first, as a SOCK_DGRAM packet socket gives it), or None."""
    if len(data) < 20:
        return None
    version = data[0] >> 4
    if version == 4:
        ihl = (data[0] & 0x0F) * 4
        total = (data[2] << 8) | data[3]
        if data[9] != 6 or ihl < 20 or total < ihl + 20 or len(data) < ihl + 20:
            return None
        if ((data[6] << 8) | data[7]) & 0x1FFF or data[6] & 0x20:  # a fragment: not reassembled here
            return None
        src_ip = socket.inet_ntop(socket.AF_INET, bytes(data[12:16]))
        dst_ip = socket.inet_ntop(socket.AF_INET, bytes(data[16:20]))
        start, end = ihl, min(total, len(data))
    elif version == 6:
        if len(data) < 60 or data[6] != 6:  # extension headers are not followed
            return None
        src_ip = socket.inet_ntop(socket.AF_INET6, bytes(data[8:24]))
        dst_ip = socket.inet_ntop(socket.AF_INET6, bytes(data[24:40]))
        start, end = 40, min(40 + ((data[4] << 8) | data[5]), len(data))
    else:
        return None
    sport, dport, seq, _ack, off, flags = struct.unpack_from("!HHIIBB", data, start)
    hl = (off >> 4) * 4
    if hl < 20 or start + hl > end:
        return None
    return Segment((src_ip, sport), (dst_ip, dport), seq, flags, bytes(data[start + hl : end]))


def _after(a: int, b: int) -> int:
    """a - b in sequence space (negative when a is before b)."""
    d = (a - b) & _MASK
    return d - (1 << 32) if d >= 1 << 31 else d


# ------------------------------------------------------------------------------------------- reassembly
@dataclass
class Opened:
    key: tuple
    peer: tuple
    local: tuple


@dataclass
class Bytes:
    key: tuple
    data: bytes


@dataclass
class Closed:
    key: tuple
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
    """Client-to-server byte streams of the connections that start while it runs."""

    def __init__(self, max_pending: int = MAX_PENDING, idle_timeout: float = IDLE_TIMEOUT,
                 max_flows: int = MAX_FLOWS) -> None:
        self.flows: dict[tuple, _Flow] = {}
        self.max_pending = max_pending
        self.idle_timeout = idle_timeout
        self.max_flows = max_flows
        self.midstream = 0  # segments of connections whose start was not seen

    def feed(self, seg: Segment, now: float = 0.0) -> list:
        key = (seg.src, seg.dst)
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
                flow.pending[flow.next] = seg.payload
                flow.pending_bytes = len(seg.payload)
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
            out.append(Opened(key, seg.src, seg.dst))
            self._drain(key, flow, out)  # TCP Fast Open data from the SYN
        if seg.payload:
            self._data(key, flow, seg.seq, seg.payload, out)
        if seg.flags & FIN:
            fin = (seg.seq + len(seg.payload)) & _MASK
            flow.fin = fin
        if key in self.flows and flow.fin is not None and flow.next == flow.fin:
            self._end(key, False, "", out)
        return out

    def _data(self, key: tuple, flow: _Flow, seq: int, payload: bytes, out: list) -> None:
        ahead = _after(seq, flow.next)
        if ahead > 0:
            if seq not in flow.pending or len(flow.pending[seq]) < len(payload):
                flow.pending_bytes += len(payload) - len(flow.pending.get(seq, b""))
                flow.pending[seq] = payload
            if flow.pending_bytes > self.max_pending:
                self._end(key, True, "a gap in the captured bytes did not fill (capture buffer overrun?)", out)
            return
        if -ahead >= len(payload):
            return  # a retransmission of bytes already delivered
        out.append(Bytes(key, payload[-ahead:]))
        flow.next = (seq + len(payload)) & _MASK
        self._drain(key, flow, out)

    def _drain(self, key: tuple, flow: _Flow, out: list) -> None:
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
                if -off < len(chunk):
                    out.append(Bytes(key, chunk[-off:]))
                    flow.next = (pseq + len(chunk)) & _MASK
                progressed = True

    def _end(self, key: tuple, reset: bool, reason: str, out: list) -> None:
        flow = self.flows.pop(key, None)
        if flow is not None and flow.opened:
            out.append(Closed(key, reset, reason))

    def expire(self, now: float) -> list:
        """Forgets connections idle for longer than the timeout (their end was not captured)."""
        out: list = []
        for key in [k for k, f in self.flows.items() if now - f.seen > self.idle_timeout]:
            self._end(key, False, "", out)
        return out

    def forget(self, key: tuple) -> None:
        self.flows.pop(key, None)


# ------------------------------------------------------------------------------------------ the sockets
# Classic BPF, as the kernel takes it (struct sock_filter): code, jt, jf, k.
_LD_B, _LD_H, _LD_W_ABS, _LDX_MSH, _LD_H_IND = 0x30, 0x28, 0x20, 0xB1, 0x48
_JEQ, _JSET, _RET = 0x15, 0x45, 0x06
_SKF_AD_MARK = (-0x1000 + 8) & _MASK


def bpf_program(port: int, family: int, skip_mark: int = 0) -> list[tuple[int, int, int, int]]:
    """Pass TCP segments to ``port`` (first fragments only, IPv4 options allowed); drop the rest, and any
    packet whose socket mark has a bit of ``skip_mark`` (the agent's own forwarded connections)."""
    prog: list[tuple[int, int, int, int]] = []
    if skip_mark:
        prog += [(_LD_W_ABS, 0, 0, _SKF_AD_MARK), (_JSET, 0, 1, skip_mark), (_RET, 0, 0, 0)]
    if family == socket.AF_INET:
        prog += [
            (_LD_B, 0, 0, 9), (_JEQ, 0, 6, 6),  # protocol TCP
            (_LD_H, 0, 0, 6), (_JSET, 4, 0, 0x1FFF),  # not a later fragment
            (_LDX_MSH, 0, 0, 0), (_LD_H_IND, 0, 0, 2),  # x = header length; the TCP destination port
            (_JEQ, 0, 1, port), (_RET, 0, 0, SNAPLEN), (_RET, 0, 0, 0),
        ]
    else:
        prog += [
            (_LD_B, 0, 0, 6), (_JEQ, 0, 3, 6),  # next header TCP
            (_LD_H, 0, 0, 42), (_JEQ, 0, 1, port), (_RET, 0, 0, SNAPLEN), (_RET, 0, 0, 0),
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
