"""The sandbox API server's exec over SPDY/3.1, as the kubelet and the container runtimes serve it.

Clients older than the websocket exec (kubectl before 1.30, client-go's SPDY executor) and clients whose Role
grants ``create`` on ``pods/exec`` but not ``get`` reach exec this way: an HTTP/1.1 upgrade (``Upgrade:
SPDY/3.1``, ``X-Stream-Protocol-Version`` naming the remotecommand protocols the client speaks), then one SPDY
stream per channel that the CLIENT creates, each named by its ``streamtype`` header. What is reproduced:

- the handshake's answers: 400 without ``X-Stream-Protocol-Version`` or without the upgrade headers (plain
  text, as the kubelet writes them), 403 with ``X-Accepted-Stream-Protocol-Versions`` when no protocol is in
  common, 101 naming the chosen protocol (the client's first that is served: ``v4.channel.k8s.io`` only here);
- the streams: a SYN_REPLY to each, the command started only once every stream the query asked for exists
  (error + stdin/stdout/stderr as requested, + resize with a terminal), at most 30 s to create them;
- stdin DATA to the process, stdin FIN (or RST) as its EOF, output as DATA on stdout/stderr, PING answered,
  unknown frames ignored, no flow-control windows (as the Go implementation: WINDOW_UPDATE ignored, none sent);
- the end: the ``metav1.Status`` JSON on the error stream, then every stream reset (CANCEL), GOAWAY, close.

The process handling itself (pipes, terminal, idle deadline, exit codes) is the API server's, shared with the
websocket exec through the small stream interface below.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING

import h11

from mirror_py.transport import spdy
from tests.sandbox.apiserver import CLOSE, RESIZE, STDERR, STDIN, STDOUT, ApiError, WsClosed, _flag
from tests.sandbox.cluster import ApiCall, ExecProblem

if TYPE_CHECKING:
    from tests.sandbox.apiserver import ApiServer, Request, RequestInfo

V4 = "v4.channel.k8s.io"
SERVED_PROTOCOLS = [V4]
STREAM_CREATION_TIMEOUT = 30.0
OUTBOUND_CHUNK = 32 * 1024
CHANNELS = {"stdin": STDIN, "stdout": STDOUT, "stderr": STDERR, "resize": RESIZE}


def is_spdy_upgrade(req: Request) -> bool:
    return "spdy/3.1" in (req.header("upgrade") or "").lower()


def _client_protocols(req: Request) -> list[str]:
    """Every X-Stream-Protocol-Version value, in order, whether sent as several headers or comma-joined."""
    values = [v for k, v in req.headers if k == "x-stream-protocol-version"]
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


class SpdyExecStream:
    """The API server's exec stream interface (``send_output``, ``receive``, ``status``, ``ws.close``) over
    the client's SPDY streams."""

    closes_stdin = True  # SPDY half-closes: a FIN on the stdin stream is the process' EOF

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, codec: spdy.Codec,
                 streams: dict[str, int], frames: deque[spdy.Frame]) -> None:
        self.reader = reader
        self.writer = writer
        self.codec = codec
        self.streams = streams
        self.by_id = {ident: name for name, ident in streams.items()}
        self.frames = frames
        self.protocol = V4
        self.ws = self  # the shared code closes "the websocket"; here that is the SPDY connection
        self.closed = False

    async def _write(self, frame: spdy.Frame) -> None:
        if self.closed:
            raise WsClosed("connection closed")
        self.writer.write(self.codec.encode(frame))
        await self.writer.drain()

    async def send_output(self, channel: int, data: bytes) -> None:
        name = "stdout" if channel == STDOUT else "stderr"
        ident = self.streams.get(name)
        if ident is None:
            return
        for start in range(0, len(data), OUTBOUND_CHUNK):
            await self._write(spdy.Data(ident, data[start : start + OUTBOUND_CHUNK]))

    async def status(self, body: bytes | None, text: str | None) -> None:
        if body is not None:
            await self._write(spdy.Data(self.streams["error"], body))

    async def receive(self) -> tuple[int, bytes] | None:
        """The next (channel, data) from the client, or None for a frame that carries nothing for the process."""
        while not self.frames:
            data = await self.reader.read(65536)
            if not data:
                raise WsClosed("client gone")
            try:
                self.frames.extend(self.codec.feed(data))
            except spdy.SpdyError as exc:
                await self.close()
                raise WsClosed(str(exc)) from None
        frame = self.frames.popleft()
        if isinstance(frame, spdy.Data):
            name = self.by_id.get(frame.stream_id)
            if name in ("stdin", "resize") and frame.data:
                return CHANNELS[name], frame.data
            if name == "stdin" and frame.fin:
                return CLOSE, bytes([STDIN])
            return None
        if isinstance(frame, spdy.RstStream) and self.by_id.get(frame.stream_id) == "stdin":
            return CLOSE, bytes([STDIN])
        if isinstance(frame, spdy.Ping) and frame.ping_id % 2 == 1:  # the client's: echo it
            await self._write(frame)
        elif isinstance(frame, spdy.GoAway):
            raise WsClosed("client went away")
        elif isinstance(frame, spdy.SynStream):
            await self._write(spdy.RstStream(frame.stream_id, spdy.PROTOCOL_ERROR))
        return None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """The Go server's connection Close: reset every stream, then GOAWAY, then the TCP close."""
        if self.closed:
            return
        with contextlib.suppress(Exception):
            for ident in self.streams.values():
                self.writer.write(self.codec.encode(spdy.RstStream(ident, spdy.CANCEL)))
            self.writer.write(self.codec.encode(spdy.GoAway(max(self.streams.values(), default=0))))
            await self.writer.drain()
        self.closed = True


async def _respond_text(conn: h11.Connection, writer: asyncio.StreamWriter, code: int, text: str,
                        extra: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
    body = (text + "\n").encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff"),
               ("Content-Length", str(len(body))), *extra]
    writer.write(conn.send(h11.Response(status_code=code, headers=headers)))
    writer.write(conn.send(h11.Data(data=body)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


async def serve_exec(server: ApiServer, req: Request, conn: h11.Connection, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter, info: RequestInfo, call: ApiCall) -> bool:
    """One exec over SPDY; True when the connection was upgraded (and is finished with)."""
    cluster = server.cluster
    if req.method not in ("GET", "POST"):
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
    query = req.query
    command = query.get("command", [])
    stdin, stdout, stderr, tty = (_flag(query, n) for n in ("stdin", "stdout", "stderr", "tty"))
    if tty and stderr:
        stderr = False
    _pod, container = cluster.resolve_container(info.namespace, info.name, query.get("container", [""])[0])
    if not (stdin or stdout or stderr):
        raise ApiError.bad_request("you must specify at least 1 of stdin, stdout, stderr")
    try:
        plan = cluster.plan_exec(info.namespace, info.name, container, command)
    except ExecProblem as exc:  # the kubelet refuses before the upgrade
        raise ApiError(500, "InternalError", f"Internal error occurred: {exc.message}",
                       {"causes": [{"message": exc.message}]}) from None
    offered = _client_protocols(req)
    if not offered:
        call.code = 400
        await _respond_text(conn, writer, 400, "unable to upgrade: X-Stream-Protocol-Version is required")
        return False
    chosen = next((p for p in offered if p in SERVED_PROTOCOLS), None)
    if chosen is None:
        call.code = 403
        await _respond_text(conn, writer, 403, f"unable to upgrade: unable to negotiate protocol: client supports "
                            f"[{' '.join(offered)}], server accepts [{' '.join(SERVED_PROTOCOLS)}]",
                            [("X-Accepted-Stream-Protocol-Versions", p) for p in SERVED_PROTOCOLS])
        return False
    if "upgrade" not in (req.header("connection") or "").lower():
        call.code = 400
        await _respond_text(conn, writer, 400, "unable to upgrade: missing upgrade headers in request")
        return False
    headers = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", chosen)]
    writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=headers, reason=b"Switching Protocols")))
    await writer.drain()
    call.code = 101
    leftover, _ = conn.trailing_data
    codec = spdy.Codec()
    wanted = {"error"} | {n for n, on in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr),
                                          ("resize", tty)) if on}
    try:
        streams, frames = await asyncio.wait_for(_accept_streams(reader, writer, codec, bytes(leftover), wanted),
                                                 STREAM_CREATION_TIMEOUT)
    except (asyncio.TimeoutError, spdy.SpdyError, WsClosed):
        # The Go server logs the error and closes the connection: the client sees it end.
        with contextlib.suppress(Exception):
            writer.write(codec.encode(spdy.GoAway(0, spdy.GOAWAY_PROTOCOL_ERROR)))
            await writer.drain()
        return True
    stream = SpdyExecStream(reader, writer, codec, streams, frames)
    try:
        await server._run_exec(stream, plan, command, stdin, stdout, stderr, tty)
        await stream.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.read(65536), 1.0)
    except WsClosed:
        await stream.close()
    return True


async def _accept_streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, codec: spdy.Codec,
                          leftover: bytes, wanted: set[str]) -> tuple[dict[str, int], deque[spdy.Frame]]:
    """SYN_REPLY to each stream the client creates until every wanted one exists; the frames that came after
    them (stdin already) are kept for the exec."""
    streams: dict[str, int] = {}
    frames: deque[spdy.Frame] = deque(codec.feed(leftover)) if leftover else deque()
    later: deque[spdy.Frame] = deque()  # frames for streams already answered: the exec's, in order
    while True:
        while frames and not wanted <= streams.keys():
            frame = frames.popleft()
            if isinstance(frame, spdy.SynStream):
                kind = (frame.headers.get("streamtype") or [""])[0]
                if kind not in wanted or kind in streams:
                    # The Go server logs "unexpected stream type" and leaves the stream unanswered.
                    continue
                streams[kind] = frame.stream_id
                writer.write(codec.encode(spdy.SynReply(frame.stream_id)))
                await writer.drain()
            elif isinstance(frame, spdy.Ping) and frame.ping_id % 2 == 1:
                writer.write(codec.encode(frame))
            elif isinstance(frame, spdy.GoAway):
                raise WsClosed("client went away")
            elif getattr(frame, "stream_id", 0) in streams.values():
                later.append(frame)
            # data on a stream not answered yet is dropped, as the Go implementation drops it
        if wanted <= streams.keys():
            return streams, later + frames
        data = await reader.read(65536)
        if not data:
            raise WsClosed("client gone")
        frames.extend(codec.feed(data))
