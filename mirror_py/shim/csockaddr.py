"""``struct sockaddr`` in C memory to and from the address tuples the Python-level shim decides with."""

from __future__ import annotations

import ctypes
import socket
import struct

AF_INET, AF_INET6 = int(socket.AF_INET), int(socket.AF_INET6)
_IN = struct.Struct("<H2s4s8x")  # family (host order), port (network order), address
_IN6 = struct.Struct("<H2sI16sI")  # family, port, flowinfo (network order), address, scope id
SIZES = {AF_INET: _IN.size, AF_INET6: _IN6.size}


def read(address: int | None, length: int) -> tuple | None:
    """The Python address of an IPv4 or IPv6 sockaddr; None for any other family (left to C untouched)."""
    if not address or length < 2:
        return None
    family = ctypes.c_uint16.from_address(address).value
    if family == AF_INET and length >= _IN.size:
        _, port, ip = _IN.unpack(ctypes.string_at(address, _IN.size))
        return socket.inet_ntop(socket.AF_INET, ip), int.from_bytes(port, "big")
    if family == AF_INET6 and length >= _IN6.size:
        _, port, flow, ip, scope = _IN6.unpack(ctypes.string_at(address, _IN6.size))
        return (socket.inet_ntop(socket.AF_INET6, ip), int.from_bytes(port, "big"),
                int.from_bytes(flow.to_bytes(4, "little"), "big"), scope)
    return None


def pack(family: int, address: tuple) -> bytes:
    """The sockaddr bytes of ``address`` as a socket of ``family`` holds it."""
    host, port = address[0], int(address[1])
    if family == AF_INET6:
        if ":" not in host:
            host = "::ffff:" + host
        flow = address[2] if len(address) > 2 else 0
        scope = address[3] if len(address) > 3 else 0
        return _IN6.pack(AF_INET6, port.to_bytes(2, "big"), int.from_bytes(flow.to_bytes(4, "big"), "little"),
                         socket.inet_pton(socket.AF_INET6, host), scope)
    return _IN.pack(AF_INET, port.to_bytes(2, "big"), socket.inet_pton(socket.AF_INET, host))


def write(data: bytes, address: int, length_p: int) -> None:
    """Stores ``data`` as getpeername/getsockname do: truncated to the caller's room, the full size reported."""
    room = ctypes.c_uint32.from_address(length_p)
    ctypes.memmove(address, data, min(room.value, len(data)))
    room.value = len(data)
