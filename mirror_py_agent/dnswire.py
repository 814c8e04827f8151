"""DNS messages and the exchange with name servers, for the agent's stub resolver (:mod:`resolver`).

Queries go out over a connected UDP socket (ICMP errors arrive, datagrams from anyone else do not), several
at once (A and AAAA together, as glibc sends them), and an answer counts only when its id and its question are
the ones asked; a truncated answer is asked again over TCP. Each name server is tried in turn for each of the
configured attempts; a server that fails (SERVFAIL, REFUSED, silence) leaves the question to the next.

Standard library only, Python 3.9+.
"""

from __future__ import annotations

import errno
import secrets
import select
import socket
import struct
import time
from typing import Any

A, CNAME, PTR, AAAA, OPT = 1, 5, 12, 28, 41
_MAX_CNAMES = 16
_MAX_UDP = 65535
#: Where name servers listen; resolv.conf cannot say otherwise (tests point it at their own server).
DNS_PORT = 53


class BadName(ValueError):
    """A name that cannot be asked (an empty or too long label, a name over 255 bytes)."""


def _encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not raw or len(raw) > 63:
            raise BadName(f"not a DNS name: {name!r}")
        out += bytes([len(raw)]) + raw
    if len(out) > 254:
        raise BadName(f"not a DNS name: {name!r}")
    return out + b"\0"


def _question(ident: int, name: str, qtype: int, edns0: bool) -> bytes:
    header = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 1 if edns0 else 0)
    body = _encode_name(name) + struct.pack(">HH", qtype, 1)
    if edns0:
        body += b"\0" + struct.pack(">HHIH", OPT, 1232, 0, 0)
    return header + body


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    labels, end, jumps = [], None, 0
    while True:
        if offset >= len(data):
            raise ValueError("truncated name")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data) or jumps > 32:
                raise ValueError("bad compression")
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            jumps += 1
            continue
        if length == 0:
            return ".".join(labels), (end if end is not None else offset + 1)
        labels.append(data[offset + 1:offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length


class Answer:
    """One response: its rcode, whether it was truncated, and its answer records as (name, type, data)."""

    def __init__(self, data: bytes, ident: int, name: str, qtype: int) -> None:
        if len(data) < 12:
            raise ValueError("short message")
        rid, flags, qd, an = struct.unpack(">HHHH", data[:8])
        if rid != ident or not flags & 0x8000:
            raise ValueError("not our answer")
        self.data = data  # the whole message: the DNS answerer (dnsanswer.py) passes its records on
        self.rcode = flags & 0xF
        self.truncated = bool(flags & 0x0200)
        offset = 12
        for _ in range(qd):
            qname, offset = _read_name(data, offset)
            qt = struct.unpack(">H", data[offset:offset + 2])[0]
            offset += 4
            if qname.lower() != name.rstrip(".").lower() or qt != qtype:
                raise ValueError("answer to another question")
        self.records: list[tuple[str, int, Any]] = []
        for _ in range(an):
            owner, offset = _read_name(data, offset)
            rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", data[offset:offset + 10])
            offset += 10
            rdata = data[offset:offset + rdlen]
            if rtype == A and rdlen == 4:
                self.records.append((owner, A, socket.inet_ntop(socket.AF_INET, rdata)))
            elif rtype == AAAA and rdlen == 16:
                self.records.append((owner, AAAA, socket.inet_ntop(socket.AF_INET6, rdata)))
            elif rtype in (CNAME, PTR):
                self.records.append((owner, rtype, _read_name(data, offset)[0]))
            offset += rdlen

    def follow(self, name: str, qtype: int) -> tuple[str, list[str], list[Any]]:
        """(final name, names that were aliases on the way, data of the records of ``qtype``)."""
        current, aliases = name.rstrip("."), []
        for _ in range(_MAX_CNAMES):
            target = next((d for o, t, d in self.records if t == CNAME and o.lower() == current.lower()), None)
            if target is None:
                break
            aliases.append(current)
            current = target
        data = [d for o, t, d in self.records if t == qtype and o.lower() == current.lower()]
        return current, aliases, data


class Unavailable(OSError):
    """No name server could be reached (glibc's NSS_STATUS_UNAVAIL)."""


def _exchange_udp(server: str, packets: dict, timeout: float) -> dict:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    answers: dict = {}
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((server, DNS_PORT))  # a connected socket: ICMP errors arrive, strangers' datagrams do not
        for packet, _ in packets.values():
            sock.send(packet)
        deadline = time.monotonic() + timeout
        while len(answers) < len(packets):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                break
            data = sock.recv(_MAX_UDP)
            if len(data) < 2:
                continue
            ident = struct.unpack(">H", data[:2])[0]
            if ident in packets and ident not in answers:
                _, (name, qtype) = packets[ident]
                try:
                    answers[ident] = Answer(data, ident, name, qtype)
                except (ValueError, struct.error, IndexError):
                    continue
    return answers


def _exchange_tcp(server: str, packet: bytes, ident: int, name: str, qtype: int, timeout: float) -> Answer:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect((server, DNS_PORT))
        sock.sendall(struct.pack(">H", len(packet)) + packet)
        size = struct.unpack(">H", _recv_exact(sock, 2))[0]
        return Answer(_recv_exact(sock, size), ident, name, qtype)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = b""
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionResetError(errno.ECONNRESET, "the name server closed the connection")
        buf += chunk
    return buf


def query(config: Any, name: str, qtypes: list[int]) -> dict:
    """qtype → Answer for one fully qualified name, from the first name server that answers usefully.
    ``config`` is a :class:`resolver.Config` (name servers, timeout, attempts, rotate, use-vc, edns0).

    Raises :class:`Unavailable` when no server could be reached and ``TimeoutError`` when none answered."""
    servers = list(config.nameservers)
    if config.rotate and len(servers) > 1:
        shift = secrets.randbelow(len(servers))
        servers = servers[shift:] + servers[:shift]
    refused = 0
    for _attempt in range(config.attempts):
        for server in servers:
            packets = {}
            for qtype in qtypes:
                ident = secrets.randbelow(0x10000)
                while ident in packets:
                    ident = secrets.randbelow(0x10000)
                packets[ident] = (_question(ident, name, qtype, config.edns0), (name, qtype))
            try:
                if config.use_vc:
                    got = {i: _exchange_tcp(server, p, i, n, t, config.timeout)
                           for i, (p, (n, t)) in packets.items()}
                else:
                    got = _exchange_udp(server, packets, config.timeout)
                    for ident, ans in list(got.items()):
                        if ans.truncated:
                            p, (n, t) = packets[ident]
                            got[ident] = _exchange_tcp(server, p, ident, n, t, config.timeout)
            except ConnectionRefusedError:
                refused += 1
                continue
            except (OSError, ValueError, struct.error):
                continue
            if len(got) < len(packets):
                continue
            # A server that fails (SERVFAIL, REFUSED, ...) is skipped; NOERROR and NXDOMAIN are answers.
            if any(ans.rcode not in (0, 3) for ans in got.values()):
                continue
            return {packets[i][1][1]: ans for i, ans in got.items()}
    if refused >= len(servers) * config.attempts:
        raise Unavailable(errno.ECONNREFUSED, "no name server could be reached")
    raise TimeoutError(errno.ETIMEDOUT, "no name server answered")
