"""Pod exec over SPDY/3.1, the way kubectl reaches pods when the websocket upgrade is refused.

A Role that grants ``create`` on ``pods/exec`` without ``get`` refuses the websocket (a GET), and servers or
proxies that do not upgrade websockets refuse it too; the SPDY upgrade is a POST (verb ``create``). The
exchange, as the kubelet and the runtimes serve it (remotecommand protocol ``v4.channel.k8s.io``):

1. ``POST .../pods/P/exec?command=..`` with ``Connection: Upgrade``, ``Upgrade: SPDY/3.1`` and
   ``X-Stream-Protocol-Version: v4.channel.k8s.io``; the answer is ``101`` naming the same, or an HTTP error
   with a ``metav1.Status`` body.
2. The client opens one SPDY stream per channel, each named by its ``streamType`` header: error, stdin,
   stdout, stderr, and waits for the server's SYN_REPLY to each (data sent before it would be dropped).
3. stdin is DATA on its stream and ends with FIN: unlike websocket v4, SPDY half-closes, so stdin EOF reaches
   the agent while its output still flows back. stdout and stderr come as DATA; the error stream carries one
   ``metav1.Status`` JSON (the exit code), then the server resets the streams and closes.

To the session this is the same :class:`~mirror_py.transport.channel.Channel` as the websocket: bytes for
stdin, on_bytes/on_stderr for output, on_pause/on_resume for backpressure, on_closed with the exit code.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any
from urllib.parse import urlsplit

from ..errors import MirrorError
from . import dial, spdy
from .channel import Channel, ChannelListener
from .k8s_exec import (
    auth_headers,
    describe_rejection,
    exec_url,
    parse_status,
)
from .stdin_queue import QueuedStdin

log = logging.getLogger("mirror_py.session")

PROTOCOL = "v4.channel.k8s.io"
STREAM_TYPES = ("error", "stdin", "stdout", "stderr")
MAX_RESPONSE_HEAD = 64 * 1024
MAX_STATUS = 64 * 1024
PING_INTERVAL = 20.0  # keeps idle proxies from cutting the connection; never a liveness verdict (the session's)


class SpdyExecChannel(QueuedStdin, Channel):
    no_python_hint = ("use --agent-mode ephemeral (its image brings python3), or point --agent-python at the "
                      "container's interpreter")

    def __init__(self, configuration: Any, namespace: str, pod: str, container: str | None, command: list[str],
                 description: str, python: str = "python3", open_timeout: float = 30.0) -> None:
        self.cfg = configuration
        self.namespace = namespace
        self.pod = pod
        self.container = container
        self.command = command
        self.description = description
        self.python = python
        self.open_timeout = open_timeout
        self.protocol: str | None = None
        self.codec = spdy.Codec()
        self.streams: dict[str, int] = {name: 1 + 2 * i for i, name in enumerate(STREAM_TYPES)}
        self._by_id = {ident: name for name, ident in self.streams.items()}
        self._finished: set[str] = set()  # streams the server ended (FIN or RST)
        self._status = bytearray()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._init_stdin()
        self._tasks: list[asyncio.Task] = []
        self._error: str | None = None

    # -------------------------------------------------------------------------------------------- opening
    async def open(self, listener: ChannelListener) -> None:
        self.listener = listener
        where = f"pod {self.namespace}/{self.pod} at {self.cfg.host}"
        try:
            await asyncio.wait_for(self._open(), self.open_timeout)
        except dial.ProxyRefused as exc:
            self._abort()
            raise MirrorError(f"cannot open an SPDY exec stream to pod {self.namespace}/{self.pod}: {exc}") from None
        except MirrorError:
            self._abort()
            raise
        except spdy.SpdyError as exc:
            self._abort()
            raise MirrorError(f"cannot open an SPDY exec stream to {where}: {exc}") from None
        except (OSError, asyncio.TimeoutError, ssl.SSLError, asyncio.IncompleteReadError, ValueError) as exc:
            self._abort()
            text = str(exc) or type(exc).__name__
            if isinstance(exc, asyncio.TimeoutError):
                text = f"no answer within {self.open_timeout:g} s"
            raise MirrorError(f"cannot open an SPDY exec stream to {where}: {text}") from None
        self._tasks = [asyncio.ensure_future(self._read_loop()), asyncio.ensure_future(self._write_loop()),
                       asyncio.ensure_future(self._pinger())]

    async def _open(self) -> None:
        parts = urlsplit(str(self.cfg.host))
        # The same road as the websocket's and the REST calls': direct or through the chosen proxy, TLS done.
        transport, _waiting = await dial.open_connection(self.cfg, self.open_timeout)
        loop = asyncio.get_running_loop()
        self._reader = asyncio.StreamReader(limit=MAX_RESPONSE_HEAD)
        protocol = asyncio.StreamReaderProtocol(self._reader)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        self._writer = asyncio.StreamWriter(transport, protocol, self._reader, loop)
        url = urlsplit(exec_url(self.cfg.host, self.namespace, self.pod, self.container, self.command))
        headers = {"Host": parts.netloc, "Connection": "Upgrade", "Upgrade": "SPDY/3.1",
                   "X-Stream-Protocol-Version": PROTOCOL, "Content-Length": "0",
                   # a token refresh may run an exec credential plugin: off the loop, as for the websocket
                   **await asyncio.to_thread(auth_headers, self.cfg)}
        head = f"POST {url.path}?{url.query} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._writer.write((head + "\r\n").encode("latin-1"))
        status, response_headers = await self._read_response_head()
        if status != 101:
            body = await self._read_body(response_headers)
            raise MirrorError(describe_rejection(status, body, self.namespace, self.pod))
        upgrade = response_headers.get("upgrade", "").lower()
        if "spdy/3.1" not in upgrade or "upgrade" not in response_headers.get("connection", "").lower():
            raise MirrorError(f"the API server answered the SPDY exec upgrade with 101 but no SPDY/3.1 upgrade "
                              f"(Upgrade: {upgrade or 'none'})")
        self.protocol = response_headers.get("x-stream-protocol-version", "")
        if self.protocol != PROTOCOL:
            raise MirrorError(f"the API server chose exec protocol {self.protocol or 'none'!r} over SPDY; mirror-py "
                              f"speaks {PROTOCOL}")
        # One stream per channel, all asked for at once; the server starts the command once it has them all.
        for name, ident in self.streams.items():
            self._writer.write(self.codec.encode(spdy.SynStream(ident, {"streamtype": [name]})))
        replied: set[int] = set()
        while len(replied) < len(self.streams):
            for frame in await self._next_frames():
                if len(replied) == len(self.streams):  # open: the rest of this read is the exec's (a fast
                    self._handle(frame)                # command's output, status and close can all be here)
                elif isinstance(frame, spdy.SynReply) and frame.stream_id in self._by_id:
                    replied.add(frame.stream_id)
                    if frame.fin:
                        self._finished.add(self._by_id[frame.stream_id])
                elif isinstance(frame, spdy.RstStream) and frame.stream_id in self._by_id.keys() - replied:
                    raise MirrorError(f"the server refused the exec's {self._by_id[frame.stream_id]} stream "
                                      f"({frame.reason})")
                elif isinstance(frame, spdy.GoAway):
                    raise MirrorError("the server closed the SPDY exec connection before the command started")
                else:
                    self._handle(frame)
        log.info("exec stream open (SPDY/3.1, %s)", self.protocol)

    async def _read_response_head(self) -> tuple[int, dict[str, str]]:
        assert self._reader is not None
        try:
            raw = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise MirrorError("the API server's answer to the SPDY exec upgrade has an over-long header") from None
        except asyncio.IncompleteReadError:
            raise MirrorError("the API server closed the connection without answering the SPDY exec upgrade") from None
        lines = raw.decode("latin-1").split("\r\n")
        fields = lines[0].split(" ", 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
            raise MirrorError(f"the API server answered the SPDY exec upgrade with {lines[0][:80]!r}, not HTTP")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                key = name.strip().lower()
                headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        return int(fields[1]), headers

    async def _read_body(self, headers: dict[str, str]) -> bytes:
        assert self._reader is not None
        try:
            length = int(headers.get("content-length", "-1"))
        except ValueError:
            length = -1
        try:
            if 0 <= length <= MAX_STATUS:
                return await asyncio.wait_for(self._reader.readexactly(length), 5)
            return await asyncio.wait_for(self._reader.read(MAX_STATUS), 5)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            return b""

    async def _next_frames(self) -> list[spdy.Frame]:
        assert self._reader is not None
        while True:
            data = await self._reader.read(256 * 1024)
            if not data:
                if self.codec.pending:
                    raise spdy.SpdyError(f"the connection ended inside a frame ({self.codec.pending} bytes held)")
                raise ConnectionResetError("the server closed the connection")
            frames = self.codec.feed(data)
            if frames:
                return frames

    # -------------------------------------------------------------------------------------------- frames
    def _handle(self, frame: spdy.Frame) -> None:
        """Every frame after the streams are open; output goes to the listener as it comes."""
        if isinstance(frame, spdy.Data):
            name = self._by_id.get(frame.stream_id)
            if name == "stdout" and frame.data:
                self.listener.on_bytes(frame.data)
            elif name == "stderr" and frame.data:
                self.listener.on_stderr(frame.data)
            elif name == "error" and len(self._status) < MAX_STATUS:
                self._status += frame.data[: MAX_STATUS - len(self._status)]
            if frame.fin and name:
                self._finished.add(name)
        elif isinstance(frame, (spdy.SynReply, spdy.HeadersFrame)):
            if frame.fin and frame.stream_id in self._by_id:
                self._finished.add(self._by_id[frame.stream_id])
        elif isinstance(frame, spdy.RstStream):
            name = self._by_id.get(frame.stream_id)
            if name:
                self._finished.add(name)
                if name == "stdin":
                    self._input_closed = True  # the server stopped reading stdin: nothing more to send
        elif isinstance(frame, spdy.Ping):
            if frame.ping_id % 2 == 0:  # the server's: answer it; ours (odd) need nothing
                self._send(frame)
        elif isinstance(frame, spdy.SynStream):
            self._send(spdy.RstStream(frame.stream_id, spdy.REFUSED_STREAM))  # a server has no streams to offer
        # SETTINGS, WINDOW_UPDATE (no windows: see spdy.py) and GOAWAY (the close follows) need nothing

    def _send(self, frame: spdy.Frame) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(self.codec.encode(frame))

    @property
    def _done(self) -> bool:
        """The status is in and stdout and stderr have ended: nothing more can come."""
        return {"error", "stdout", "stderr"} <= self._finished

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while not self._done:
                data = await self._reader.read(256 * 1024)
                if not data:
                    if self.codec.pending:
                        self._error = f"the SPDY exec connection ended inside a frame ({self.codec.pending} bytes)"
                    break
                for frame in self.codec.feed(data):
                    self._handle(frame)
        except spdy.SpdyError as exc:
            self._error = f"the SPDY exec stream failed: {exc}"
        except (OSError, ssl.SSLError) as exc:
            self._error = f"the SPDY exec stream failed: {exc!r}" if not self._status else None
        finally:
            for task in self._tasks:
                if task is not asyncio.current_task():
                    task.cancel()
            code, message = parse_status(bytes(self._status)) if self._status else (None, None)
            self._abort()
            self._closed.set()
            self.listener.on_closed(code, message or self._error)

    # -------------------------------------------------------------------------------------------- writing
    async def _write_loop(self) -> None:
        assert self._writer is not None
        writer, stdin = self._writer, self.streams["stdin"]

        async def send(chunk: bytes) -> None:
            writer.write(self.codec.encode(spdy.Data(stdin, chunk)))
            await writer.drain()

        try:
            await self._pump_stdin(send)
            if "stdin" not in self._finished:
                writer.write(self.codec.encode(spdy.Data(stdin, b"", fin=True)))  # stdin EOF
                await writer.drain()
        except Exception as exc:  # the reader reports the closure; nothing to send on a dead connection
            log.debug("SPDY exec writer stopped: %r", exc)

    async def _pinger(self) -> None:
        ping_id = 1
        while True:
            await asyncio.sleep(PING_INTERVAL)
            self._send(spdy.Ping(ping_id))
            ping_id = (ping_id + 2) & 0x7FFFFFFF or 1

    # -------------------------------------------------------------------------------------------- closing
    def kill(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._writer is not None and not self._writer.is_closing():
            self._send(spdy.GoAway(0, spdy.GOAWAY_OK))
        self._abort()
        if not self._closed.is_set() and not self._tasks:
            self._closed.set()

    def _abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
