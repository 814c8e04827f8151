"""Answering DNS queries that the app sent to this machine's name server, as the target's resolver would.

C code that resolves names itself (c-ares: grpcio's default resolver, pycares, aiodns) reads the laptop's
``resolv.conf`` and sends its own packets to the laptop's name server, where the cluster's names do not exist.
The session hands those datagrams here instead, and each is answered with the target's view:

- the target's ``/etc/hosts`` first for A and AAAA questions (its ``hostAliases``), as its C library would;
- then the target's name servers, with its search list and ``ndots`` applied to the name asked (the app's
  own search list was the laptop's; ``postgres`` must still find ``postgres.staging.svc.cluster.local``);
- records of the name that answered are renamed to the name asked, so the asker accepts the answer;
- the answer fits what the asker can take over UDP (512 bytes, or its EDNS size): records that do not fit
  are left out, and only an answer whose first record does not fit is marked truncated.

Message handling is sans-I/O (:func:`parse_query`, :func:`records_of`, :func:`build_reply`); :func:`answer`
adds the exchange with the target's name servers (:mod:`dnswire`). Standard library only, Python 3.9+.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple, Optional

from . import dnswire, resolver

NS, CNAME, SOA, PTR, MX, SRV, DNAME, OPT = 2, 5, 6, 12, 15, 33, 39, 41
A, AAAA = dnswire.A, dnswire.AAAA
NOERROR, SERVFAIL, NXDOMAIN, NOTIMP = 0, 2, 3, 4
IN = 1
_TTL_FROM_HOSTS = 5  # seconds an answer taken from the hosts file may be kept: the file can change
_OUR_EDNS_SIZE = 1232
_MIN_UDP = 512


class Query(NamedTuple):
    ident: int
    flags: int
    name: str  # as asked, case kept
    raw_name: bytes  # the question's name in wire form, echoed as it came
    qtype: int
    qclass: int
    udp_size: int  # what the asker can receive: 512 without EDNS
    edns: bool


class Record(NamedTuple):
    name: str
    rtype: int
    rclass: int
    ttl: int
    rdata: bytes  # without compression pointers


def parse_query(packet: bytes) -> Query:
    """One standard query with one question; ``ValueError`` for anything else."""
    if len(packet) < 12:
        raise ValueError("short message")
    ident, flags, qd, _an, _ns, ar = struct.unpack(">HHHHHH", packet[:12])
    if flags & 0x8000:
        raise ValueError("a response, not a query")
    if qd != 1:
        raise ValueError("not exactly one question")
    name, offset = dnswire._read_name(packet, 12)
    raw_name = packet[12:offset]
    if not raw_name.endswith(b"\0") or offset + 4 > len(packet):
        raise ValueError("bad question")  # a pointer in the only question: nothing to point at
    qtype, qclass = struct.unpack(">HH", packet[offset:offset + 4])
    offset += 4
    udp_size, edns = _MIN_UDP, False
    for _ in range(ar):  # an OPT record says how much the asker can take
        _owner, offset = dnswire._read_name(packet, offset)
        rtype, rclass = struct.unpack(">HH", packet[offset:offset + 4])
        rdlen = struct.unpack(">H", packet[offset + 8:offset + 10])[0]
        offset += 10 + rdlen
        if rtype == OPT:
            edns, udp_size = True, max(_MIN_UDP, min(rclass, _OUR_EDNS_SIZE))
    return Query(ident, flags, name, raw_name, qtype, qclass, udp_size, edns)


def _name_rdata(data: bytes, offset: int, rtype: int, rdlen: int) -> bytes:
    """The record's data with every name in it written out in full (pointers point into the old message)."""
    end = offset + rdlen
    if rtype in (NS, CNAME, PTR, DNAME):
        return _encode(dnswire._read_name(data, offset)[0])
    if rtype == MX:
        return data[offset:offset + 2] + _encode(dnswire._read_name(data, offset + 2)[0])
    if rtype == SRV:
        return data[offset:offset + 6] + _encode(dnswire._read_name(data, offset + 6)[0])
    if rtype == SOA:
        mname, after = dnswire._read_name(data, offset)
        rname, after = dnswire._read_name(data, after)
        return _encode(mname) + _encode(rname) + data[after:after + 20]
    return data[offset:end]


def _encode(name: str) -> bytes:
    if not name:
        return b"\0"
    return dnswire._encode_name(name)


def records_of(message: bytes) -> tuple[int, list[Record], list[Record]]:
    """(rcode, answer records, authority records) of a response, names written out in full."""
    _ident, flags, qd, an, ns, _ar = struct.unpack(">HHHHHH", message[:12])
    offset = 12
    for _ in range(qd):
        _name, offset = dnswire._read_name(message, offset)
        offset += 4
    sections: list[list[Record]] = [[], []]
    for index, count in enumerate((an, ns)):
        for _ in range(count):
            owner, offset = dnswire._read_name(message, offset)
            rtype, rclass, ttl, rdlen = struct.unpack(">HHIH", message[offset:offset + 10])
            offset += 10
            if offset + rdlen > len(message):
                raise ValueError("truncated record")
            if rtype != OPT:
                sections[index].append(Record(owner, rtype, rclass, ttl, _name_rdata(message, offset, rtype, rdlen)))
            offset += rdlen
    return flags & 0xF, sections[0], sections[1]


def _record(record: Record, asked: str) -> bytes:
    # The name asked is the question's, at offset 12: records of that name point there, as servers do.
    owner = b"\xc0\x0c" if record.name == asked else _encode(record.name)
    return owner + struct.pack(">HHIH", record.rtype, record.rclass, record.ttl, len(record.rdata)) + record.rdata


def _fitting(records: list[Record], asked: str, room: int) -> tuple[list[bytes], int]:
    """The records, encoded, that fit ``room`` bytes in order, and the bytes they take."""
    out, used = [], 0
    for record in records:
        rr = _record(record, asked)
        if used + len(rr) > room:
            break
        out.append(rr)
        used += len(rr)
    return out, used


def build_reply(query: Query, rcode: int, answers: list[Record], authority: list[Record] = ()) -> bytes:
    """A response to ``query``: its id, question and recursion-desired bit, recursion available; as many
    records as fit the asker's size."""
    flags = 0x8000 | (query.flags & 0x7800) | (query.flags & 0x0100) | 0x0080 | (rcode & 0xF)
    question = query.raw_name + struct.pack(">HH", query.qtype, query.qclass)
    opt = b"\0" + struct.pack(">HHIH", OPT, _OUR_EDNS_SIZE, 0, 0) if query.edns else b""
    room = query.udp_size - 12 - len(question) - len(opt)
    encoded, used = _fitting(answers, query.name, room)
    truncated = len(encoded) < len(answers) and not encoded
    auth: list[bytes] = []
    if len(encoded) == len(answers):  # the negative-answer SOA, when there is room for it
        auth, _ = _fitting(authority, query.name, room - used)
    if truncated:
        flags |= 0x0200
    header = struct.pack(">HHHHHH", query.ident, flags, 1, len(encoded), len(auth), 1 if opt else 0)
    return header + question + b"".join(encoded) + b"".join(auth) + opt


def error_reply(packet: bytes, rcode: int) -> Optional[bytes]:
    """A bare error response to whatever ``packet`` is, or None when it is not even a message header."""
    if len(packet) < 12:
        return None
    ident, flags = struct.unpack(">HH", packet[:4])
    if flags & 0x8000:
        return None  # never answer a response: two answerers must not talk to each other
    return struct.pack(">HHHHHH", ident, 0x8000 | (flags & 0x7900) | 0x0080 | rcode, 0, 0, 0, 0)


def _renamed(records: list[Record], found: str, asked: str) -> list[Record]:
    low = found.rstrip(".").lower()
    return [r._replace(name=asked) if r.name.rstrip(".").lower() == low else r for r in records]


def _from_hosts(read: resolver.Reader, query: Query) -> Optional[list[Record]]:
    if query.qtype not in (A, AAAA) or query.qclass != IN:
        return None
    family = socket.AF_INET if query.qtype == A else socket.AF_INET6
    found = resolver._files_forward(read, query.name, (family,))
    if found is None or not found.addrs:
        return None
    return [Record(query.name, query.qtype, IN, _TTL_FROM_HOSTS, socket.inet_pton(fam, addr))
            for fam, addr in found.addrs]


def answer(packet: bytes, read: resolver.Reader) -> Optional[bytes]:
    """The reply to one query datagram, as a process in the target would get it; None to stay silent."""
    try:
        query = parse_query(packet)
    except (ValueError, struct.error, IndexError, UnicodeDecodeError):
        return error_reply(packet, 1)  # FORMERR
    if query.flags & 0x7800:
        return build_reply(query, NOTIMP, [])  # only standard queries
    hosts = _from_hosts(read, query)
    if hosts is not None:
        return build_reply(query, NOERROR, hosts)
    config = resolver.Config(read)
    nodata: Optional[tuple[list[Record], list[Record]]] = None
    last_authority: list[Record] = []
    for candidate in resolver._candidates(config, query.name):
        try:
            got = dnswire.query(config, candidate, [query.qtype])[query.qtype]
        except dnswire.BadName:
            continue
        except OSError:  # no name server answered (Unavailable, TimeoutError)
            return build_reply(query, SERVFAIL, [])
        try:
            rcode, answers, authority = records_of(got.data)
        except (ValueError, struct.error, IndexError, UnicodeDecodeError):
            return build_reply(query, SERVFAIL, [])
        if rcode == NOERROR and answers:
            return build_reply(query, NOERROR, _renamed(answers, candidate, query.name))
        if rcode == NOERROR and nodata is None:
            nodata = ([], authority)
        last_authority = authority
    if nodata is not None:
        return build_reply(query, NOERROR, *nodata)
    return build_reply(query, NXDOMAIN, [], last_authority)
