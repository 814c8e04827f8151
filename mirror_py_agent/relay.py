"""asyncio glue between the sans-I/O :class:`~mirror_py_agent.protocol.Connection` and real sockets.

The same classes run on both ends: in the agent a relay's socket is the target-side connection, in the session
it is the relay endpoint that the app's own kernel socket is connected to. Keeping one implementation means
flow control, half-close and resets behave the same in both directions.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import os
import socket
import struct
from typing import Callable

from . import dns, dnsanswer
from . import protocol as p
from .budget import UNBOUNDED, Budget


def errno_name(exc: BaseException) -> str:
    """Symbolic errno of an exception, as carried on the wire.

    ``TIMEOUT`` is no errno: the time limit of the operation expired (the agent enforces the app's socket
    timeout on a connect), which the app gets as Python's own ``socket.timeout``, errno None. A kernel timeout
    is ``ETIMEDOUT``."""
    if isinstance(exc, socket.gaierror):
        return _EAI_NAMES.get(exc.errno, "EAI_FAIL")
    if isinstance(exc, socket.herror):
        return f"H_ERRNO_{exc.errno}"
    num = getattr(exc, "errno", None)
    if isinstance(exc, (asyncio.TimeoutError, socket.timeout)) and not num:
        return "TIMEOUT"
    if isinstance(num, int) and num in errno_mod.errorcode:
        return errno_mod.errorcode[num]
    return "EIO"


def error_text(exc: BaseException) -> str:
    """The words sent with an error, which the app (or the user, for the agent's own errors) reads.

    An error the kernel raised carries the kernel's words already (``os.strerror``), and one the agent raised
    itself carries its explanation ("the agent has no CAP_NET_ADMIN ..."): both are sent as they are. Where a
    library rewords the kernel's error, the agent undoes that at the call (see :func:`kernel_error`). A timeout
    that the agent enforced for the app's socket timeout reads as Python's socket timeout does."""
    if isinstance(exc, (socket.gaierror, socket.herror)):
        return exc.strerror or str(exc)
    num = getattr(exc, "errno", None)
    if isinstance(exc, (asyncio.TimeoutError, socket.timeout)) and not num:
        return "timed out"
    text = getattr(exc, "strerror", None)
    if not text and isinstance(num, int) and num in errno_mod.errorcode:
        text = os.strerror(num)
    return text or str(exc) or type(exc).__name__


def kernel_error(exc: OSError) -> OSError:
    """The kernel's own error for one that asyncio reworded: its connect failures say
    "Connect call failed ('10.0.0.1', 80)", where a connect in the pod says "Connection refused" — and clients
    such as redis-py put that text into their own messages, which code matches on."""
    num = exc.errno
    if isinstance(num, int) and num in errno_mod.errorcode and exc.strerror != os.strerror(num):
        return type(exc)(num, os.strerror(num))
    return exc


_EAI_NAMES = {getattr(socket, n): n for n in dir(socket) if n.startswith("EAI_")}


class Mux:
    """Routes stream events from the channel to the relays that own the streams, and turns channel
    backpressure into paused reads on every stream. ``budget`` bounds what the agent's buffers hold (the
    session's mux has one too, unused)."""

    def __init__(self, conn: p.Connection, write: Callable[[bytes], None], budget: Budget | None = None) -> None:
        self.conn = conn
        self._write = write
        self.budget = budget if budget is not None else Budget(UNBOUNDED)
        self.streams: dict[int, StreamEndpoint] = {}
        self.channel_paused = False
        self.credit_threshold = max(1, conn.window // 4)

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self._write(out)
            if self.budget.waiting:
                self.budget.wake()

    def pause_channel(self) -> None:
        self.channel_paused = True
        for relay in list(self.streams.values()):
            relay.update_reading()

    def resume_channel(self) -> None:
        self.channel_paused = False
        for relay in list(self.streams.values()):
            relay.update_reading()

    def dispatch(self, ev: p.Event) -> bool:
        """Delivers a stream event; returns False for events that are not about streams."""
        if isinstance(ev, p.Data):
            relay = self.streams.get(ev.stream)
            if relay is not None:
                relay.on_channel_data(ev.data)
            return True
        if isinstance(ev, p.Credit):
            relay = self.streams.get(ev.stream)
            if relay is not None:
                relay.on_credit()
            return True
        if isinstance(ev, p.StreamEof):
            relay = self.streams.get(ev.stream)
            if relay is not None:
                relay.on_channel_eof()
            return True
        if isinstance(ev, p.StreamClosed):
            relay = self.streams.pop(ev.stream, None)
            if relay is not None:
                relay.on_channel_close(ev.errno)
            return True
        if isinstance(ev, p.Datagram):
            relay = self.streams.get(ev.stream)
            if relay is not None:
                relay.on_datagram(ev.host, ev.port, ev.data)
            return True
        return False

    def close_all(self, errno: str | None = "ECONNRESET") -> None:
        """The channel is gone: every stream ends, as a reset, since its far side is unreachable."""
        for sid, relay in list(self.streams.items()):
            self.streams.pop(sid, None)
            self.conn.forget_stream(sid)
            relay.on_channel_lost(errno)


class StreamEndpoint:
    """What the mux needs from a relay."""

    def update_reading(self) -> None:
        pass

    def on_channel_data(self, data: bytes) -> None:
        pass

    def on_credit(self) -> None:
        pass

    def on_channel_eof(self) -> None:
        pass

    def on_channel_close(self, errno: str | None) -> None:
        pass

    def on_channel_lost(self, errno: str | None) -> None:
        """The whole channel is gone (not just this stream): by default the same as a close."""
        self.on_channel_close(errno)

    def on_datagram(self, host: str, port: int, data: bytes) -> None:
        pass


_LINGER_RESET = struct.pack("ii", 1, 0)


class TcpRelay(asyncio.Protocol, StreamEndpoint):
    """Relays one TCP connection to a channel stream, with credit flow control both ways.

    A relay may exist before its socket does (the session learns of a stream before the app connects to the
    relay endpoint, and the target may speak first): channel data is held until :meth:`attach`.
    """

    def __init__(self, mux: Mux, sid: int, on_done: Callable[[], None] | None = None) -> None:
        self.mux = mux
        self.sid = sid
        self.transport: asyncio.Transport | None = None
        self.started = False
        self._pending = bytearray()  # read from the socket, waiting for credit
        self._held: list[bytes] = []  # from the channel, waiting for the socket
        self._unacked = 0  # written to the socket, credit not yet returned
        self._write_paused = False
        self._reading = True
        self._socket_eof = False  # the socket's peer finished sending
        self._eof_sent = False
        self._channel_eof = False
        self._closed = False
        self._on_done = on_done
        mux.streams[sid] = self

    # ---- socket side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        self.attach(transport)  # type: ignore[arg-type]

    def attach(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.update_reading()
        if self._closed:
            transport.close()
            return
        held, self._held = self._held, []
        for chunk in held:
            self._write_to_socket(chunk)
        if self._channel_eof:
            self._socket_write_eof()

    def start(self) -> None:
        """Begins reading the socket: the agent calls it once the stream's open reply is on its way, so that
        no data frame can overtake the reply."""
        self.started = True
        self.update_reading()

    def update_reading(self) -> None:
        t = self.transport
        if t is None or self._closed:
            return
        want = (
            self.started
            and not self._pending
            and not self._socket_eof
            and not self.mux.channel_paused
            and self.mux.conn.send_window(self.sid) > 0
        )
        if want and self.mux.budget.over():
            want = False
            self.mux.budget.when_room(self.update_reading)
        if want != self._reading:
            self._reading = want
            try:
                if want:
                    t.resume_reading()
                else:
                    t.pause_reading()
            except (RuntimeError, AttributeError):
                pass

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        conn = self.mux.conn
        if self._pending:
            self._pending += data
            self.mux.budget.charge(len(data))
        else:
            window = conn.send_window(self.sid)
            if len(data) <= window:
                conn.send_data(self.sid, data)
                self.mux.flush()
                if window == len(data):
                    self.update_reading()
                return
            if window > 0:
                conn.send_data(self.sid, data[:window])
                self.mux.flush()
            self._pending = bytearray(data[window:])
            self.mux.budget.charge(len(self._pending))
        self.update_reading()

    def eof_received(self) -> bool:
        self._socket_eof = True
        if not self._pending:
            self._send_eof()
        return True  # keep the socket open for the other direction

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._grant()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self.mux.streams.pop(self.sid, None)
        if exc is not None:
            self.mux.conn.send_close(self.sid, errno_name(exc), error_text(exc))
        elif not (self._eof_sent and self._channel_eof):
            self.mux.conn.send_close(self.sid, None, "closed")
        else:
            self.mux.conn.forget_stream(self.sid)
        self.mux.flush()
        self._done()

    # ---- channel side
    def on_credit(self) -> None:
        if self._pending:
            conn = self.mux.conn
            n = min(len(self._pending), conn.send_window(self.sid))
            if n > 0:
                conn.send_data(self.sid, bytes(self._pending[:n]))
                del self._pending[:n]
                self.mux.budget.release(n)
                if not self._pending and self._socket_eof:
                    self._send_eof()
                self.mux.flush()
        self.update_reading()

    def on_channel_data(self, data: bytes) -> None:
        if self.transport is None:
            self._held.append(data)
            return
        self._write_to_socket(data)

    def _write_to_socket(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        self._unacked += len(data)
        if self._unacked >= self.mux.credit_threshold:
            self._grant()

    def _grant(self) -> None:
        if self._unacked and not self._write_paused and not self._closed:
            self.mux.conn.send_credit(self.sid, self._unacked)
            self._unacked = 0
            self.mux.flush()

    def on_channel_eof(self) -> None:
        self._channel_eof = True
        if self.transport is not None:
            self._socket_write_eof()

    def _socket_write_eof(self) -> None:
        t = self.transport
        assert t is not None
        if self._socket_eof and self._eof_sent:
            t.close()
            return
        try:
            if t.can_write_eof():
                t.write_eof()
        except (OSError, RuntimeError):
            pass

    def _send_eof(self) -> None:
        if self._eof_sent:
            return
        self._eof_sent = True
        self.mux.conn.send_eof(self.sid)
        self.mux.flush()
        if self._channel_eof and self.transport is not None:
            self.transport.close()

    def on_channel_close(self, errno: str | None) -> None:
        if self._closed:
            return
        self._closed = True
        t = self.transport
        if t is not None:
            if errno is not None:
                sock = t.get_extra_info("socket")
                if sock is not None:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                    except OSError:
                        pass
                t.abort()
            else:
                t.close()
        self._done()

    def _done(self) -> None:
        if self._pending:  # a closed stream sends nothing more: its bytes go back to the budget
            self.mux.budget.release(len(self._pending))
            self._pending = bytearray()
        cb, self._on_done = self._on_done, None
        if cb is not None:
            cb()


def address_key(host: str, port: int) -> tuple[bytes, int] | None:
    """One form per address, whatever its spelling (``::ffff:10.0.0.1`` is 10.0.0.1)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            packed = socket.inet_pton(family, host.split("%", 1)[0])
        except (OSError, ValueError):
            continue
        if packed[:12] == b"\0" * 10 + b"\xff\xff":
            packed = packed[12:]
        return packed, port
    return None


class UdpRelay(asyncio.DatagramProtocol, StreamEndpoint):
    """A datagram socket behind a channel stream: every datagram carries its far address.

    Datagrams to ``answered`` addresses (the name servers of the app's machine, which the target cannot reach
    and whose answers would be the laptop's) are not sent: the target's resolver answers them
    (:mod:`dnsanswer`), and the answer comes back from the address the query went to."""

    _MAX_ANSWERING = 32  # queries answered at once; more are dropped, as a busy name server drops them

    def __init__(self, mux: Mux, sid: int, answered: frozenset = frozenset()) -> None:
        self.mux = mux
        self.sid = sid
        self.answered = answered
        self.answering = 0
        self.transport: asyncio.DatagramTransport | None = None
        mux.streams[sid] = self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        # Anyone who reaches the pod can send to this socket (it is bound on every address), as fast as they
        # like: a datagram the channel cannot take now is dropped and counted, as the network would drop it,
        # instead of queueing toward a session that is not reading.
        mux = self.mux
        if mux.channel_paused or not mux.budget.fits(len(data)):
            mux.budget.drop_datagram(len(data))
            return
        mux.conn.send_datagram(self.sid, addr[0], addr[1], data)
        mux.flush()

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors for one destination must not end the socket

    def on_datagram(self, host: str, port: int, data: bytes) -> None:
        if self.answered and address_key(host, port) in self.answered:
            self._answer(host, port, data)
        elif self.transport is not None:
            try:
                self.transport.sendto(data, (host, port))
            except (OSError, ValueError):
                pass

    def _answer(self, host: str, port: int, query: bytes) -> None:
        if self.answering >= self._MAX_ANSWERING:
            return
        self.answering += 1
        future = asyncio.get_running_loop().run_in_executor(None, dnsanswer.answer, query, dns.reader())

        def done(f: asyncio.Future) -> None:
            self.answering -= 1
            reply = None if f.cancelled() or f.exception() is not None else f.result()
            if reply is not None and self.mux.streams.get(self.sid) is self:
                self.mux.conn.send_datagram(self.sid, host, port, reply)
                self.mux.flush()

        future.add_done_callback(done)

    def on_channel_close(self, errno: str | None) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.mux.streams.pop(self.sid, None) is not None:
            self.mux.conn.send_close(self.sid, None, "closed")
            self.mux.flush()
