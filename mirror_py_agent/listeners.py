"""Does anything in the target listen on a loopback port?

A loopback connect of the app goes to the target (a sidecar listens there) unless a listener of the app's own
session on the laptop takes it. A listener of some other laptop process (the IDE that pydevd connects back to,
a debug adapter VS Code started) takes it only when nothing in the target listens on that address and port:
then the pod would refuse the connect anyway, and the laptop's listener is the one the app means. The session
asks this once per such port; the agent reads its network namespace's socket tables, which costs no connect
that a sidecar would see.
"""

from __future__ import annotations

import socket
import sys

_STATES = {"tcp": "0A", "udp": "07"}  # TCP LISTEN; an unconnected (bound) UDP socket
_V6_LOOPBACK = bytes(15) + b"\x01"
_MAPPED = bytes(10) + b"\xff\xff"


def _kernel_hex(raw: bytes) -> str:
    """An address as ``/proc/net/*`` spells it: each 32-bit word in this host's byte order, upper-case hex."""
    if sys.byteorder == "big":
        return raw.hex().upper()
    return "".join(raw[i:i + 4][::-1].hex().upper() for i in range(0, len(raw), 4))


def _table(name: str) -> str:
    # thread-self follows the calling thread's namespace: a job-mode agent entered the target's with setns().
    for path in (f"/proc/thread-self/net/{name}", f"/proc/net/{name}"):
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                return f.read()
        except OSError:
            continue
    return ""


def _wanted(ip: str) -> dict[str, set[bytes]]:
    """Table suffix ('' for IPv4, '6') -> the local addresses whose sockets take a connect to loopback ``ip``:
    the address itself, its family's wildcard, and for IPv4 the dual-stack forms of an IPv6 socket."""
    if ":" in ip:
        raw = socket.inet_pton(socket.AF_INET6, ip.partition("%")[0])
        if raw.startswith(_MAPPED):
            ip = socket.inet_ntop(socket.AF_INET, raw[12:])
        else:
            if raw not in (_V6_LOOPBACK, bytes(16)):
                raise ValueError(f"{ip} is not a loopback address")
            return {"6": {_V6_LOOPBACK, bytes(16)}}
    raw = socket.inet_pton(socket.AF_INET, ip)
    if raw == bytes(4):
        raw = bytes((127, 0, 0, 1))
    if raw[0] != 127:
        raise ValueError(f"{ip} is not a loopback address")
    return {"": {raw, bytes(4)}, "6": {_MAPPED + raw, bytes(16)}}


def listens(args: dict) -> dict:
    """``{"proto": "tcp"|"udp", "ip": loopback address, "port": N}`` -> ``{"listens": bool}``: whether a
    socket of the target's network namespace would take a connect there (TCP listening, UDP bound and not
    connected; wildcard and dual-stack binds included)."""
    proto, ip, port = args["proto"], args["ip"], args["port"]
    if proto not in _STATES or not isinstance(ip, str) or isinstance(port, bool) or not isinstance(port, int):
        raise ValueError("listens needs proto (tcp or udp), ip and port")
    port_hex = f"{port:04X}"
    for suffix, raws in _wanted(ip).items():
        wanted = {_kernel_hex(raw) for raw in raws}
        for line in _table(proto + suffix).splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4:
                continue
            addr, _, lport = fields[1].rpartition(":")
            if lport == port_hex and fields[3] == _STATES[proto] and addr in wanted:
                return {"listens": True}
    return {"listens": False}
