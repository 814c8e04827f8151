"""HTTP/1.x framing and the request filter, without I/O: what the agent needs to split one keep-alive
connection between the local app and the pod's own app, request by request.

Nothing here rewrites a byte. A request's head is parsed only to decide where it goes and where its body ends;
the bytes forwarded are exactly the bytes received, so chunk extensions, trailers, odd header casing and
``Expect: 100-continue`` all pass as they came.

This module is shared with the agent: standard library only, Python 3.9+.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

MAX_HEAD = 64 * 1024  # a request or response head larger than this is not HTTP we can route
MAX_LINE = 8 * 1024  # a request line longer than this decides "not HTTP/1.x"

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([^ \r\n]+) HTTP/1\.([01])\r?\n")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\r\n]*))?\r?\n")
_HEAD_END = re.compile(rb"\r?\n\r?\n")


class HttpError(ValueError):
    """The bytes are not HTTP/1.x the way the routing needs them (malformed, too large)."""


def looks_like_http1(prefix: bytes) -> bool | None:
    """Is this the start of an HTTP/1.x request? True or False once the request line is complete (or
    cannot be one), None while more bytes are needed. TLS, HTTP/2's preface and binary protocols are
    recognised from their first byte or line."""
    if not prefix:
        return None
    first = prefix[:1]
    if not (b"A" <= first <= b"Z"):
        return False
    end = prefix.find(b"\n")
    if end < 0:
        if len(prefix) > MAX_LINE or not re.match(_TOKEN + rb"(?: [^ \r\n]*)?$", prefix[: MAX_LINE + 1]):
            return False
        return None
    return _REQUEST_LINE.match(prefix[: end + 1]) is not None


def _headers(block: bytes) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for line in re.split(rb"\r?\n", block):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            raise HttpError("obsolete header line folding")
        name, sep, value = line.partition(b":")
        if not sep or not re.fullmatch(_TOKEN, name):
            raise HttpError(f"malformed header line {line[:80]!r}")
        out.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return out


def _find_head(buf: bytes | bytearray) -> int:
    """The length of the head (through the blank line), or -1 if it is not complete yet."""
    m = _HEAD_END.search(buf, 0, MAX_HEAD + 4)
    if m is None:
        if len(buf) > MAX_HEAD:
            raise HttpError(f"head larger than {MAX_HEAD} bytes")
        return -1
    return m.end()


def _values(headers: list[tuple[str, str]], name: str) -> list[str]:
    lname = name.lower()
    return [v for n, v in headers if n.lower() == lname]


def _tokens(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [t.strip().lower() for v in _values(headers, name) for t in v.split(",") if t.strip()]


def _content_length(headers: list[tuple[str, str]]) -> int | None:
    values = {v.strip() for v in _values(headers, "content-length")}
    if not values:
        return None
    if len(values) != 1:
        raise HttpError("conflicting Content-Length headers")
    (value,) = values
    if not value.isdigit():
        raise HttpError(f"invalid Content-Length {value!r}")
    return int(value)


@dataclass
class RequestHead:
    method: str
    target: str
    minor: int  # HTTP/1.<minor>
    headers: list[tuple[str, str]]
    raw: bytes

    @property
    def path(self) -> str:
        """The path of the request target, without the query: ``/a/b`` for ``/a/b?x=1`` and for
        ``http://host/a/b?x=1``."""
        target = self.target
        if "://" in target:
            rest = target.split("://", 1)[1]
            slash = rest.find("/")
            target = rest[slash:] if slash >= 0 else "/"
        return target.split("?", 1)[0].split("#", 1)[0]

    def header_lines(self) -> list[str]:
        return [f"{n}: {v}" for n, v in self.headers]

    def body(self) -> tuple[str, int]:
        """How the request body is framed: ``("chunked", 0)`` or ``("length", n)`` (n may be 0)."""
        te = _tokens(self.headers, "transfer-encoding")
        if te:
            if te[-1] != "chunked":
                raise HttpError("a request Transfer-Encoding must end with chunked")
            return "chunked", 0
        return "length", _content_length(self.headers) or 0

    @property
    def upgrade(self) -> bool:
        return self.method == "CONNECT" or (
            "upgrade" in _tokens(self.headers, "connection") and bool(_values(self.headers, "upgrade"))
        )


@dataclass
class ResponseHead:
    minor: int
    status: int
    headers: list[tuple[str, str]]
    raw: bytes

    def body(self, request_method: str) -> tuple[str, int]:
        """``("none", 0)``, ``("length", n)``, ``("chunked", 0)`` or ``("close", 0)`` (until the server closes)."""
        if request_method == "HEAD" or 100 <= self.status < 200 or self.status in (204, 304):
            return "none", 0
        if request_method == "CONNECT" and 200 <= self.status < 300:
            return "close", 0
        te = _tokens(self.headers, "transfer-encoding")
        if te:
            return ("chunked", 0) if te[-1] == "chunked" else ("close", 0)
        length = _content_length(self.headers)
        return ("length", length) if length is not None else ("close", 0)

    @property
    def closes(self) -> bool:
        """Does the connection end after this response?"""
        conn = _tokens(self.headers, "connection")
        if "close" in conn:
            return True
        return self.minor == 0 and "keep-alive" not in conn


def _first_line(raw: bytes) -> bytes:
    return raw.split(b"\n", 1)[0][:80]


def parse_request_head(buf: bytes | bytearray) -> tuple[RequestHead, int] | None:
    """The request head at the start of ``buf`` and its length, or None until it is complete."""
    end = _find_head(buf)
    if end < 0:
        return None
    raw = bytes(buf[:end])
    m = _REQUEST_LINE.match(raw)
    if m is None:
        raise HttpError(f"not an HTTP/1.x request line: {_first_line(raw)!r}")
    head = RequestHead(m.group(1).decode("ascii"), m.group(2).decode("latin-1"), int(m.group(3)),
                       _headers(raw[m.end():]), raw)
    return head, end


def parse_response_head(buf: bytes | bytearray) -> tuple[ResponseHead, int] | None:
    end = _find_head(buf)
    if end < 0:
        return None
    raw = bytes(buf[:end])
    m = _STATUS_LINE.match(raw)
    if m is None:
        raise HttpError(f"not an HTTP/1.x status line: {_first_line(raw)!r}")
    return ResponseHead(int(m.group(1)), int(m.group(2)), _headers(raw[m.end():]), raw), end


class BodyFramer:
    """Finds where a body ends in the bytes that follow a head, without changing them.

    :meth:`feed` returns how many of the given bytes belong to the body; :attr:`done` is set once the body is
    complete (a ``close``-framed body is never done: it ends with the connection).
    """

    def __init__(self, kind: str, length: int = 0) -> None:
        self.kind = kind
        self.remaining = length
        self.done = kind == "none" or (kind == "length" and length == 0)
        self._state = "size"  # chunked: size, data, data_crlf, trailer
        self._line = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        if self.done:
            return 0
        if self.kind == "close":
            return len(data)
        if self.kind == "length":
            n = min(self.remaining, len(data))
            self.remaining -= n
            self.done = self.remaining == 0
            return n
        return self._feed_chunked(data)

    def _feed_chunked(self, data: bytes | bytearray | memoryview) -> int:
        pos, end = 0, len(data)
        while pos < end and not self.done:
            if self._state == "data":
                n = min(self.remaining, end - pos)
                pos += n
                self.remaining -= n
                if self.remaining == 0:
                    self._state = "data_crlf"
                continue
            nl = bytes(data[pos:end]).find(b"\n")
            if nl < 0:
                self._line += data[pos:end]
                if len(self._line) > MAX_LINE:
                    raise HttpError("chunk-size or trailer line too long")
                return end
            line = bytes(self._line) + bytes(data[pos : pos + nl])
            self._line.clear()
            pos += nl + 1
            line = line.rstrip(b"\r")
            if self._state == "size":
                size = line.split(b";", 1)[0].strip()
                if not size or not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", size):
                    raise HttpError(f"invalid chunk size {line[:40]!r}")
                self.remaining = int(size, 16)
                self._state = "data" if self.remaining else "trailer"
            elif self._state == "data_crlf":
                if line:
                    raise HttpError("chunk data not followed by CRLF")
                self._state = "size"
            elif not line:  # trailer section ends with an empty line
                self.done = True
        return pos


# ------------------------------------------------------------------------------------------------ filter
@dataclass
class HttpFilter:
    """A request filter, compiled from its JSON form: ``header``, ``path`` and ``method`` are regexes searched
    case-insensitively (``header`` in each ``Name: value`` line, ``path`` in the path without the query,
    ``method`` in the method); ``all_of`` and ``any_of`` hold nested filters. Every key present must match."""

    spec: dict
    _tests: list[Callable[[RequestHead], bool]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        spec = self.spec
        if not isinstance(spec, dict):
            raise ValueError("a filter must be a map")
        unknown = set(spec) - {"header", "path", "method", "all_of", "any_of"}
        if unknown:
            raise ValueError(f"unknown filter keys {sorted(unknown)}")
        for key in ("header", "path", "method"):
            if spec.get(key) is not None:
                try:
                    rx = re.compile(spec[key], re.IGNORECASE)
                except re.error as exc:
                    raise ValueError(f"{key}: not a valid regular expression: {exc}") from None
                self._tests.append(_regex_test(key, rx))
        for key in ("all_of", "any_of"):
            if spec.get(key) is not None:
                subs = [HttpFilter(s) for s in spec[key]]
                if not subs:
                    raise ValueError(f"{key} must not be empty")
                if key == "all_of":
                    self._tests.append(lambda h, subs=subs: all(f.matches(h) for f in subs))
                else:
                    self._tests.append(lambda h, subs=subs: any(f.matches(h) for f in subs))
        if not self._tests:
            raise ValueError("a filter needs header, path, method, all_of or any_of")

    def matches(self, head: RequestHead) -> bool:
        return all(test(head) for test in self._tests)


def _regex_test(key: str, rx: re.Pattern) -> Callable[[RequestHead], bool]:
    if key == "header":
        return lambda h: any(rx.search(line) for line in h.header_lines())
    if key == "path":
        return lambda h: rx.search(h.path) is not None
    return lambda h: rx.search(h.method) is not None
