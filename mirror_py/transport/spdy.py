"""SPDY/3.1 framing, sans I/O: bytes in, frames out, and frames to bytes.

Kubernetes exec spoke SPDY/3.1 before websockets, and every API server and kubelet still does: a Role that
grants only ``create`` on ``pods/exec`` reaches exec only this way. Like the agent protocol, this module does no
I/O, so every malformed input can be tested byte by byte; the exec client (spdy_exec.py) wraps it with asyncio.

What Kubernetes' SPDY endpoints actually do decides two things here:
- Header blocks are zlib streams, one per direction for the whole connection, primed with the SPDY/3
  dictionary below; a block is compressed and sync-flushed frame by frame.
- Flow control: SPDY/3.1 defines 64 KiB windows and WINDOW_UPDATE, but Kubernetes' SPDY implementation (both
  its client and the server side in the kubelet and runtimes) never sends WINDOW_UPDATE and ignores the ones
  it gets. A sender that waited for windows would stall after 64 KiB, so WINDOW_UPDATE is parsed and left to
  the caller, and TCP's own backpressure is the flow control, as it is for every Kubernetes client.

Every malformed frame raises :class:`SpdyError` with a one-line reason; a frame cut short waits for more bytes
(``pending`` tells how many are held, so a connection that ends inside a frame can say so).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Union

VERSION = 3
# control frame types
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, NOOP, PING, GOAWAY, HEADERS, WINDOW_UPDATE, CREDENTIAL = range(1, 11)
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
# RST_STREAM status codes
PROTOCOL_ERROR, INVALID_STREAM, REFUSED_STREAM, UNSUPPORTED_VERSION, CANCEL, INTERNAL_ERROR = range(1, 7)
FLOW_CONTROL_ERROR, STREAM_IN_USE, STREAM_ALREADY_CLOSED = 7, 8, 9
# GOAWAY status codes
GOAWAY_OK, GOAWAY_PROTOCOL_ERROR, GOAWAY_INTERNAL_ERROR = 0, 1, 2

MAX_FRAME = (1 << 24) - 1  # the 24-bit length field
MAX_HEADER_BLOCK = 256 * 1024  # decompressed; a peer's headers here are a handful of short names
RST_NAMES = {1: "PROTOCOL_ERROR", 2: "INVALID_STREAM", 3: "REFUSED_STREAM", 4: "UNSUPPORTED_VERSION", 5: "CANCEL",
             6: "INTERNAL_ERROR", 7: "FLOW_CONTROL_ERROR", 8: "STREAM_IN_USE", 9: "STREAM_ALREADY_CLOSED",
             10: "INVALID_CREDENTIALS", 11: "FRAME_TOO_LARGE"}

# The SPDY/3 header compression dictionary (SPDY Protocol, Draft 3, section 2.6.10.1): these words, each
# preceded by its length as a 32-bit big-endian integer, then the tail below as it stands. It is a protocol
# constant: both ends must prime zlib with exactly these 1423 bytes.
_DICTIONARY_WORDS = (
    "options head post put delete trace accept accept-charset accept-encoding accept-language accept-ranges "
    "age allow authorization cache-control connection content-base content-encoding content-language "
    "content-length content-location content-md5 content-range content-type date etag expect expires from "
    "host if-match if-modified-since if-none-match if-range if-unmodified-since last-modified location "
    "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after server te trailer "
    "transfer-encoding upgrade user-agent vary via warning www-authenticate method get status"
).split() + ["200 OK"] + "version HTTP/1.1 url public set-cookie keep-alive origin".split()
_DICTIONARY_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _DICTIONARY_WORDS) + _DICTIONARY_TAIL.encode()

Headers = dict  # name (lower case) -> list of values; a value list is NUL-joined on the wire


class SpdyError(Exception):
    """A malformed or unexpected frame: the connection cannot go on (the message says why, in one line)."""


@dataclass(frozen=True)
class Data:
    stream_id: int
    data: bytes
    fin: bool = False


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    headers: Headers = field(default_factory=dict)
    fin: bool = False
    unidirectional: bool = False
    associated_to: int = 0
    priority: int = 0


@dataclass(frozen=True)
class SynReply:
    stream_id: int
    headers: Headers = field(default_factory=dict)
    fin: bool = False


@dataclass(frozen=True)
class HeadersFrame:
    stream_id: int
    headers: Headers = field(default_factory=dict)
    fin: bool = False


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int

    @property
    def reason(self) -> str:
        return RST_NAMES.get(self.status, f"status {self.status}")


@dataclass(frozen=True)
class Settings:
    entries: tuple[tuple[int, int, int], ...] = ()  # (flags, id, value)
    clear: bool = False


@dataclass(frozen=True)
class Ping:
    ping_id: int


@dataclass(frozen=True)
class GoAway:
    last_good_stream_id: int
    status: int = GOAWAY_OK


@dataclass(frozen=True)
class WindowUpdate:
    stream_id: int
    delta: int


Frame = Union[Data, SynStream, SynReply, HeadersFrame, RstStream, Settings, Ping, GoAway, WindowUpdate]


class Codec:
    """One end of one SPDY/3.1 connection: it owns that connection's two header compression contexts, so a
    connection needs exactly one Codec, fed every byte in order."""

    def __init__(self, max_header_block: int = MAX_HEADER_BLOCK) -> None:
        self._deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY,
                                         DICTIONARY)
        self._inflate = zlib.decompressobj(15, DICTIONARY)
        self._buffer = bytearray()
        self.max_header_block = max_header_block

    @property
    def pending(self) -> int:
        """Bytes held of a frame not complete yet."""
        return len(self._buffer)

    # ------------------------------------------------------------------------------------------- encoding
    def encode(self, frame: Frame) -> bytes:
        if isinstance(frame, Data):
            _check_stream_id(frame.stream_id, "DATA")
            if len(frame.data) > MAX_FRAME:
                raise SpdyError(f"SPDY DATA frame of {len(frame.data)} bytes (at most {MAX_FRAME})")
            flags = FLAG_FIN if frame.fin else 0
            return struct.pack(">II", frame.stream_id, (flags << 24) | len(frame.data)) + frame.data
        if isinstance(frame, SynStream):
            _check_stream_id(frame.stream_id, "SYN_STREAM")
            flags = (FLAG_FIN if frame.fin else 0) | (FLAG_UNIDIRECTIONAL if frame.unidirectional else 0)
            body = struct.pack(">IIBB", frame.stream_id, frame.associated_to & 0x7FFFFFFF, (frame.priority & 7) << 5, 0)
            return self._control(SYN_STREAM, flags, body + self._header_block(frame.headers))
        if isinstance(frame, (SynReply, HeadersFrame)):
            kind = SYN_REPLY if isinstance(frame, SynReply) else HEADERS
            _check_stream_id(frame.stream_id, "SYN_REPLY" if kind == SYN_REPLY else "HEADERS")
            body = struct.pack(">I", frame.stream_id) + self._header_block(frame.headers)
            return self._control(kind, FLAG_FIN if frame.fin else 0, body)
        if isinstance(frame, RstStream):
            return self._control(RST_STREAM, 0, struct.pack(">II", frame.stream_id, frame.status))
        if isinstance(frame, Settings):
            body = struct.pack(">I", len(frame.entries)) + b"".join(
                struct.pack(">II", (flags << 24) | ident, value) for flags, ident, value in frame.entries)
            return self._control(SETTINGS, 1 if frame.clear else 0, body)
        if isinstance(frame, Ping):
            return self._control(PING, 0, struct.pack(">I", frame.ping_id))
        if isinstance(frame, GoAway):
            return self._control(GOAWAY, 0, struct.pack(">II", frame.last_good_stream_id, frame.status))
        if isinstance(frame, WindowUpdate):
            return self._control(WINDOW_UPDATE, 0, struct.pack(">II", frame.stream_id, frame.delta))
        raise TypeError(f"not a SPDY frame: {frame!r}")

    @staticmethod
    def _control(kind: int, flags: int, body: bytes) -> bytes:
        return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(body)) + body

    def _header_block(self, headers: Headers) -> bytes:
        raw = bytearray(struct.pack(">I", len(headers)))
        for name, values in headers.items():
            values = [values] if isinstance(values, str) else list(values)
            name_b, value_b = name.lower().encode("latin-1"), "\0".join(values).encode("latin-1")
            raw += struct.pack(">I", len(name_b)) + name_b + struct.pack(">I", len(value_b)) + value_b
        return self._deflate.compress(bytes(raw)) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    # ------------------------------------------------------------------------------------------- decoding
    def feed(self, data: bytes) -> list[Frame]:
        """The frames completed by ``data`` (possibly none); raises SpdyError on the first malformed one."""
        self._buffer += data
        frames: list[Frame] = []
        buf = self._buffer
        offset = 0
        while len(buf) - offset >= 8:
            word, flags_length = struct.unpack_from(">II", buf, offset)
            length = flags_length & 0xFFFFFF
            flags = flags_length >> 24
            if len(buf) - offset - 8 < length:
                break
            body = bytes(buf[offset + 8 : offset + 8 + length])
            offset += 8 + length
            if word & 0x80000000:
                version, kind = (word >> 16) & 0x7FFF, word & 0xFFFF
                if version != VERSION:
                    del buf[:offset]
                    raise SpdyError(f"SPDY control frame of version {version} (this connection speaks {VERSION})")
                frame = self._control_frame(kind, flags, body)
                if frame is not None:
                    frames.append(frame)
            else:
                if word == 0:
                    del buf[:offset]
                    raise SpdyError("SPDY DATA frame on stream 0")
                if flags & ~FLAG_FIN:
                    del buf[:offset]
                    raise SpdyError(f"SPDY DATA frame with unknown flags 0x{flags:02x}")
                frames.append(Data(word, body, bool(flags & FLAG_FIN)))
        del buf[:offset]
        return frames

    def _control_frame(self, kind: int, flags: int, body: bytes) -> Frame | None:
        name = _KIND_NAMES.get(kind)
        if name is None or kind in (NOOP, CREDENTIAL):
            return None  # unknown (or obsolete) control frames are ignored, as SPDY/3 requires
        fixed = {RST_STREAM: 8, PING: 4, GOAWAY: 8, WINDOW_UPDATE: 8}.get(kind)
        if fixed is not None and len(body) != fixed:
            raise SpdyError(f"SPDY {name} frame of {len(body)} bytes (must be {fixed})")
        minimum = {SYN_STREAM: 10, SYN_REPLY: 4, HEADERS: 4, SETTINGS: 4}.get(kind, 0)
        if len(body) < minimum:
            raise SpdyError(f"SPDY {name} frame of {len(body)} bytes (at least {minimum})")
        if kind == SYN_STREAM:
            stream_id, associated, priority = struct.unpack_from(">IIB", body)
            _check_stream_id(stream_id & 0x7FFFFFFF, name)
            headers = self._parse_headers(body[10:], name)
            return SynStream(stream_id & 0x7FFFFFFF, headers, bool(flags & FLAG_FIN),
                             bool(flags & FLAG_UNIDIRECTIONAL), associated & 0x7FFFFFFF, priority >> 5)
        if kind in (SYN_REPLY, HEADERS):
            (stream_id,) = struct.unpack_from(">I", body)
            _check_stream_id(stream_id & 0x7FFFFFFF, name)
            headers = self._parse_headers(body[4:], name)
            cls = SynReply if kind == SYN_REPLY else HeadersFrame
            return cls(stream_id & 0x7FFFFFFF, headers, bool(flags & FLAG_FIN))
        if kind == RST_STREAM:
            stream_id, status = struct.unpack(">II", body)
            _check_stream_id(stream_id & 0x7FFFFFFF, name)
            if status == 0:
                raise SpdyError("SPDY RST_STREAM frame with status 0 (not a status)")
            return RstStream(stream_id & 0x7FFFFFFF, status)
        if kind == SETTINGS:
            (count,) = struct.unpack_from(">I", body)
            if len(body) != 4 + 8 * count:
                raise SpdyError(f"SPDY SETTINGS frame of {len(body)} bytes for {count} entries "
                                f"(must be {4 + 8 * count})")
            entries = tuple((word >> 24, word & 0xFFFFFF, value)
                            for word, value in struct.iter_unpack(">II", body[4:]))
            return Settings(entries, bool(flags & 1))
        if kind == PING:
            return Ping(struct.unpack(">I", body)[0])
        if kind == GOAWAY:
            last, status = struct.unpack(">II", body)
            return GoAway(last & 0x7FFFFFFF, status)
        stream_id, delta = struct.unpack(">II", body)  # WINDOW_UPDATE
        delta &= 0x7FFFFFFF
        if delta == 0:
            raise SpdyError("SPDY WINDOW_UPDATE frame with a delta of 0")
        return WindowUpdate(stream_id & 0x7FFFFFFF, delta)

    def _parse_headers(self, compressed: bytes, frame: str) -> Headers:
        try:
            raw = self._inflate.decompress(compressed, self.max_header_block + 1)
        except zlib.error as exc:
            raise SpdyError(f"SPDY {frame} frame: its header block does not decompress ({exc})") from None
        if len(raw) > self.max_header_block or self._inflate.unconsumed_tail:
            raise SpdyError(f"SPDY {frame} frame: header block over {self.max_header_block} bytes")
        try:
            (count,) = struct.unpack_from(">I", raw)
            offset = 4
            headers: Headers = {}
            for _ in range(count):
                (size,) = struct.unpack_from(">I", raw, offset)
                name = raw[offset + 4 : offset + 4 + size]
                if len(name) != size:
                    raise struct.error
                offset += 4 + size
                (size,) = struct.unpack_from(">I", raw, offset)
                value = raw[offset + 4 : offset + 4 + size]
                if len(value) != size:
                    raise struct.error
                offset += 4 + size
                key = name.decode("latin-1")
                if not key:
                    raise SpdyError(f"SPDY {frame} frame: a header with an empty name")
                if key != key.lower():
                    raise SpdyError(f"SPDY {frame} frame: header name {key!r} is not lower case")
                if key in headers:
                    raise SpdyError(f"SPDY {frame} frame: header {key!r} appears twice")
                headers[key] = value.decode("latin-1").split("\0")
        except struct.error:
            raise SpdyError(f"SPDY {frame} frame: its header block ends in the middle of a header") from None
        if offset != len(raw):
            raise SpdyError(f"SPDY {frame} frame: {len(raw) - offset} bytes after its {count} headers")
        return headers


_KIND_NAMES = {SYN_STREAM: "SYN_STREAM", SYN_REPLY: "SYN_REPLY", RST_STREAM: "RST_STREAM", SETTINGS: "SETTINGS",
               NOOP: "NOOP", PING: "PING", GOAWAY: "GOAWAY", HEADERS: "HEADERS", WINDOW_UPDATE: "WINDOW_UPDATE",
               CREDENTIAL: "CREDENTIAL"}


def _check_stream_id(stream_id: int, frame: str) -> None:
    if not 0 < stream_id <= 0x7FFFFFFF:
        raise SpdyError(f"SPDY {frame} frame on stream {stream_id} (stream ids are 1 to 2^31-1)")
