"""This machine's name servers: DNS packets the app sends them are answered by the target's resolver.

Code that resolves names itself (c-ares in grpcio, pycares and aiodns, or a hand-written DNS client) reads
this machine's ``resolv.conf`` and sends UDP queries to the name server it names. From the target that
address means nothing (``127.0.0.53`` is the laptop's own resolver), and the laptop's name server does not
know the cluster's names. So a UDP datagram to port 53 of one of these addresses goes to the agent, whose
``dnsanswer`` module answers it the way the target's resolver would (its hosts file, name servers, search
list), from the very address it was sent to. Queries to any other name server (``8.8.8.8``, the cluster's
DNS) are ordinary UDP and leave from the target.

``resolv.conf`` is read with this machine's files (never the target's, which the file rules may route) and
read again when it changes; a missing file or one without ``nameserver`` lines means 127.0.0.1 and ::1, the
C resolvers' default.
"""

from __future__ import annotations

import socket

PATH = "/etc/resolv.conf"
DNS_PORT = 53
_DEFAULT = ("127.0.0.1", "::1")
_cache: list = [None, ()]  # [(inode, mtime, size) of PATH, normalized addresses]


def _normal(ip: str) -> str | None:
    for family in (socket.AF_INET6, socket.AF_INET):
        try:
            packed = socket.inet_pton(family, ip.split("%", 1)[0])
        except (OSError, ValueError):
            continue
        if len(packed) == 16 and packed[:12] == b"\0" * 10 + b"\xff\xff":
            return socket.inet_ntop(socket.AF_INET, packed[12:])
        return socket.inet_ntop(family, packed)
    return None


def parse(text: str) -> tuple[str, ...]:
    """The ``nameserver`` addresses of a resolv.conf, normalized."""
    found = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            ip = _normal(words[1])
            if ip is not None and ip not in found:
                found.append(ip)
    return tuple(found) or _DEFAULT


def local_nameservers() -> tuple[str, ...]:
    from . import scope

    with scope.local():  # this machine's file, whatever the file rules say of /etc/resolv.conf
        import os

        try:
            st = os.stat(PATH)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp != _cache[0] or not _cache[1]:
            try:
                with open(PATH, encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except OSError:
                text = ""
            _cache[:] = [stamp, parse(text)]
    return _cache[1]


def is_local_nameserver(ip: str, port: int) -> bool:
    """Does a datagram to ``ip``:``port`` go to one of this machine's name servers?"""
    if port != DNS_PORT:
        return False
    normal = _normal(ip)
    return normal is not None and normal in local_nameservers()


def answered() -> list[list]:
    """What the agent answers itself, for a UDP socket's relay."""
    return [[ip, DNS_PORT] for ip in local_nameservers()]
