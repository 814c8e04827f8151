"""glibc's order of the addresses getaddrinfo returns: RFC 3484 destination address selection with glibc's
default policy table (the stub resolver does not read the target's ``gai.conf``).

The rules applied are 1 (avoid unusable destinations), 2 (matching scope), 5 (matching label), 6 (higher
precedence), 8 (smaller scope), 9 (longest matching prefix; for IPv4 only inside the source address's subnet,
as glibc does) and 10 (otherwise keep the order). The source address of each destination is the one the kernel
picks for a UDP socket connected to it, in the network namespace the agent entered.

Standard library only, Python 3.9+.
"""

from __future__ import annotations

import fcntl
import functools
import ipaddress
import socket
import struct

_PRECEDENCE = [("::1/128", 50), ("2002::/16", 30), ("::/96", 20), ("::ffff:0:0/96", 10), ("::/0", 40)]
_LABELS = [("::1/128", 0), ("2002::/16", 2), ("::/96", 3), ("::ffff:0:0/96", 4), ("fec0::/10", 5),
           ("fc00::/7", 6), ("2001::/32", 7), ("::/0", 1)]
_PRECEDENCE_NETS = [(ipaddress.IPv6Network(n), v) for n, v in _PRECEDENCE]
_LABEL_NETS = [(ipaddress.IPv6Network(n), v) for n, v in _LABELS]


def _as6(family: int, addr: str) -> ipaddress.IPv6Address:
    if family == socket.AF_INET:
        return ipaddress.IPv6Address("::ffff:" + addr)
    return ipaddress.IPv6Address(addr.split("%", 1)[0])


def _table(table: list, address: ipaddress.IPv6Address) -> int:
    best = None
    for net, value in table:
        if address in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, value)
    return best[1] if best else 0


def _scope(family: int, addr: str) -> int:
    if family == socket.AF_INET:
        first = ipaddress.IPv4Address(addr)
        return 2 if first.is_loopback or first.is_link_local else 14
    a = ipaddress.IPv6Address(addr.split("%", 1)[0])
    if a.is_multicast:
        return a.packed[1] & 0xF
    if a.is_loopback or a.is_link_local:
        return 2
    if a.is_site_local:
        return 5
    return 14


def _ipv4_prefixlens() -> dict:
    """Each local IPv4 address → its netmask length (glibc applies rule 9 to IPv4 only inside a subnet)."""
    out = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            req = struct.pack("256s", name.encode()[:15])
            try:
                addr = socket.inet_ntoa(fcntl.ioctl(sock.fileno(), 0x8915, req)[20:24])  # SIOCGIFADDR
                mask = fcntl.ioctl(sock.fileno(), 0x891B, req)[20:24]  # SIOCGIFNETMASK
            except OSError:
                continue
            out[addr] = bin(int.from_bytes(mask, "big")).count("1")
    return out


def _source(family: int, addr: str) -> str | None:
    """The source address the kernel would pick for ``addr`` (None: unreachable), as glibc finds it."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((addr, 9) if family == socket.AF_INET else (addr, 9, 0, 0))
            return sock.getsockname()[0]
    except OSError:
        return None


def _common_prefix(a: bytes, b: bytes) -> int:
    bits = 0
    for x, y in zip(a, b):
        diff = x ^ y
        if diff == 0:
            bits += 8
            continue
        return bits + 8 - diff.bit_length()
    return bits


def sort_addresses(addrs: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """glibc's RFC 3484 destination order (rules 1, 2, 5, 6, 8, 9, 10) with its default policy table."""
    if len(addrs) < 2:
        return list(addrs)
    prefixlens = _ipv4_prefixlens() if any(f == socket.AF_INET for f, _ in addrs) else {}
    keyed = []
    for index, (fam, addr) in enumerate(addrs):
        src = _source(fam, addr)
        dst6 = _as6(fam, addr)
        keyed.append({"index": index, "fam": fam, "addr": addr, "src": src, "dst6": dst6,
                      "src6": _as6(fam, src) if src else None, "scope": _scope(fam, addr),
                      "src_scope": _scope(fam, src) if src else None,
                      "label": _table(_LABEL_NETS, dst6), "prec": _table(_PRECEDENCE_NETS, dst6)})

    def rule9_bits(k: dict) -> int:
        if k["fam"] == socket.AF_INET:
            plen = prefixlens.get(k["src"], 32)
            dst, src = int(ipaddress.IPv4Address(k["addr"])), int(ipaddress.IPv4Address(k["src"]))
            mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0
            return (dst ^ src).bit_length() if (dst & mask) == (src & mask) else 0
        return _common_prefix(k["dst6"].packed, k["src6"].packed)

    def compare(a: dict, b: dict) -> int:
        if (a["src"] is None) != (b["src"] is None):  # rule 1: avoid unusable destinations
            return 1 if a["src"] is None else -1
        if a["src"] is not None and b["src"] is not None:
            a2, b2 = a["scope"] == a["src_scope"], b["scope"] == b["src_scope"]  # rule 2: matching scope
            if a2 != b2:
                return -1 if a2 else 1
            a5 = a["label"] == _table(_LABEL_NETS, a["src6"])  # rule 5: matching label
            b5 = b["label"] == _table(_LABEL_NETS, b["src6"])
            if a5 != b5:
                return -1 if a5 else 1
        if a["prec"] != b["prec"]:  # rule 6: higher precedence
            return -1 if a["prec"] > b["prec"] else 1
        if a["scope"] != b["scope"]:  # rule 8: smaller scope
            return -1 if a["scope"] < b["scope"] else 1
        if a["src"] is not None and b["src"] is not None and a["fam"] == b["fam"]:  # rule 9
            bits_a, bits_b = rule9_bits(a), rule9_bits(b)
            if bits_a != bits_b:
                return -1 if bits_a > bits_b else 1
        return -1 if a["index"] < b["index"] else 1  # rule 10: keep the order

    keyed.sort(key=functools.cmp_to_key(compare))
    return [(k["fam"], k["addr"]) for k in keyed]
