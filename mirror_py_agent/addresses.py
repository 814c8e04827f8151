"""The address prefix of a relayed datagram: ``len:u8 host:ascii port:u16``.

Its own tiny module because the shim uses it inside the app's interpreter, where importing the whole protocol
(and cbor2) at start-up would be wasted time.
"""

from __future__ import annotations

import struct

_U16 = struct.Struct(">H")


def encode_address(host: str, port: int) -> bytes:
    raw = host.encode("ascii")
    if len(raw) > 255:
        raise ValueError("host too long")
    return bytes((len(raw),)) + raw + _U16.pack(port)


def decode_address(buf: bytes | memoryview) -> tuple[str, int, int]:
    """Returns host, port and the offset where the payload starts; raises ValueError when malformed."""
    if len(buf) < 1:
        raise ValueError("empty address")
    n = buf[0]
    if len(buf) < 1 + n + 2:
        raise ValueError("truncated address")
    host = bytes(buf[1 : 1 + n]).decode("ascii")
    (port,) = _U16.unpack_from(buf, 1 + n)
    return host, port, 1 + n + 2
