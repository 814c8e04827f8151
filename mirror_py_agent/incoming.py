"""Incoming traffic: the connections that reach the target on a port the session subscribed to.

Each connection becomes an agent-initiated stream (an even id, announced by an ``accept`` message) that the
session connects to the local app's listener.

- **mirror**: a copy taken by packet capture (:mod:`capture`); the pod's app keeps serving every request and
  the stream only carries what the client sent. Whatever happens to the copy, the client is unaffected.
- **steal**: iptables REDIRECTs the port to a listener of the agent (:mod:`iptables`). Without a filter each
  connection is relayed whole. With an HTTP filter each request is routed on its own: matching requests to
  the local app, the rest to the original destination (the pod's app), both over one client connection;
  anything that is not HTTP/1.x goes to the original destination untouched.

A stolen client never waits without bound: when the local side has not answered within the steal timeout,
or a client of a filtered port takes longer than the header timeout to send a request head, the connection
goes to the original destination instead, with what the client sent so far, provided the client has received
nothing from the laptop yet (so it sees exactly one answer: the target's). Sending more than
:data:`REPLAY_LIMIT` cannot be passed on: the wait goes on while the local side keeps taking the bytes (a large
upload), and ends in an error the client sees at once when it has taken none for the steal timeout.

Standard library only, Python 3.9+.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import time
from typing import Any

from . import capture, http1, iptables
from .relay import Mux, StreamEndpoint, TcpRelay

SO_ORIGINAL_DST = 80  # also IP6T_SO_ORIGINAL_DST
READ = 256 * 1024
FIRST_BYTES_TIMEOUT = 2.0  # a client silent this long on a filtered port is passed through (server-first protocols)
BATCH_QUEUE = 256 * 1024  # mirrored bytes queued toward the channel in one batch before copies wait for it
COPY_SHARE = 4  # one mirrored copy may hold at most 1/COPY_SHARE of the agent's memory budget
STEAL_TIMEOUT = 30.0  # default seconds for the local side to answer a stolen connection or request
HEADER_TIMEOUT = 20.0  # default seconds a client of a filtered port may take to send one request head
REPLAY_LIMIT = 64 * 1024  # bytes kept to pass a request on to the original destination when the laptop is silent
EXPIRE_EVERY = 30.0
BATCH_WINDOW = 0.005  # a mirroring agent reads its captured packets at most this often
DRAIN_LIMIT = 4096  # packets read in one go before the agent's other work gets a turn

_BAD_GATEWAY = (
    b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 56\r\nConnection: close\r\n\r\n"
    b"mirror-py: the local app did not accept the connection\n"
)
_GATEWAY_TIMEOUT = (
    b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain\r\nContent-Length: 73\r\nConnection: close\r\n\r\n"
    b"mirror-py: the local app did not answer, and the request was too large to pass on\n"
)

_by_mux: dict[int, Incoming] = {}


def for_mux(mux: Mux) -> Incoming:
    inc = _by_mux.get(id(mux))
    if inc is None or inc.mux is not mux:
        inc = _by_mux[id(mux)] = Incoming(mux)
    return inc


async def subscribe(args: dict, mux: Mux) -> dict:
    return await for_mux(mux).subscribe(args)


async def unsubscribe(args: dict, mux: Mux) -> dict:
    return await for_mux(mux).unsubscribe(args)


async def stats(args: dict, mux: Mux) -> dict:
    return for_mux(mux).stats()


async def clean(args: dict, mux: Mux) -> dict:
    """Removes the rules of crashed sessions. The session asks once the agent is placed: the agent must stay
    single-threaded until then (entering a mount namespace needs that), and this runs in a thread."""
    removed = await asyncio.get_running_loop().run_in_executor(None, clean_stale_rules)
    return {"removed": removed}


async def check(args: dict, mux: Mux) -> dict:
    """What this agent lacks for ``mode`` here ({"missing": [...]}), asked once it is placed, so that a session
    that will steal learns at its start, not at the app's first listening port, that the agent's image has no
    iptables (the official python images do not) or that it holds no CAP_NET_ADMIN."""
    if args.get("mode") != "steal":
        return {"missing": []}

    def probe() -> list:
        missing = []
        if not iptables.has_capability(iptables.CAP_NET_ADMIN):
            missing.append("CAP_NET_ADMIN")
        if not iptables.binaries():
            missing.append("iptables")
        return missing

    return {"missing": await asyncio.get_running_loop().run_in_executor(None, probe)}


async def close_all() -> None:
    for inc in list(_by_mux.values()):
        await inc.close()
    _by_mux.clear()


def clean_stale_rules() -> list[str]:
    """Removes the rules of crashed sessions, when this agent is able to (best effort, at start-up)."""
    if not iptables.has_capability(iptables.CAP_NET_ADMIN):
        return []
    try:
        bins = iptables.binaries()
        if not bins:
            return []
        with iptables.netns_lock(bins):
            return iptables.clean_stale(bins)
    except (OSError, iptables.IptablesError):
        return []


def _seconds(args: dict, key: str, default: float) -> float:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{key} must be a positive number of seconds, not {value!r}")
    return float(value)


class Incoming:
    """The subscriptions of one agent (one session)."""

    def __init__(self, mux: Mux) -> None:
        self.mux = mux
        self.subs: dict[int, Any] = {}
        self.rules: iptables.Rules | None = None
        self._rules_lock = asyncio.Lock()  # concurrent subscriptions share one chain (and one dead-man helper)
        self._next_sid = 2

    def new_stream_id(self) -> int:
        """The next free even stream id (the session's are odd)."""
        while True:
            sid = self._next_sid
            self._next_sid = sid + 2 if sid + 2 < 1 << 32 else 2
            if sid not in self.mux.streams and not self.mux.conn.is_open(sid):
                return sid

    async def subscribe(self, args: dict) -> dict:
        sub, port, mode, spec = args["sub"], args["port"], args["mode"], args.get("filter")
        timeouts = {key: _seconds(args, key, default)
                    for key, default in (("steal_timeout", STEAL_TIMEOUT), ("header_timeout", HEADER_TIMEOUT))}
        if not isinstance(sub, int) or isinstance(sub, bool):
            raise ValueError("sub must be an integer")
        lowest = 0 if mode == "listen" else 1  # a port of its own may be any free one
        if not isinstance(port, int) or isinstance(port, bool) or not lowest <= port < 65536:
            raise ValueError(f"port must be an integer in {lowest}..65535")
        if sub in self.subs:
            raise ValueError(f"subscription {sub} exists")
        for other in self.subs.values():
            if port and other.port == port:
                raise OSError(errno.EADDRINUSE, f"port {port} is already subscribed by this session")
        if mode == "mirror":
            if not iptables.has_capability(iptables.CAP_NET_RAW):
                raise PermissionError(errno.EPERM, "the agent has no CAP_NET_RAW, which mirroring needs (a packet "
                                      "socket reads copies of the port's packets)")
            handler: Any = MirrorPort(self, sub, port)
            handler.start()
        elif mode == "steal":
            if not iptables.has_capability(iptables.CAP_NET_ADMIN):
                raise PermissionError(errno.EPERM, "the agent has no CAP_NET_ADMIN, which stealing needs (iptables "
                                      "rules in the target's network namespace)")
            flt = http1.HttpFilter(spec) if spec else None
            handler = StealPort(self, sub, port, flt, **timeouts)
            await handler.start()
        elif mode == "listen":
            bind = args.get("bind") or "0.0.0.0"
            if not isinstance(bind, str):
                raise ValueError("bind must be an address")
            handler = ListenPort(self, sub, port, bind)
            await handler.start()
        else:
            raise ValueError(f"mode must be mirror, steal or listen, not {mode!r}")
        self.subs[sub] = handler
        return {"sub": sub, "port": handler.port, "mode": mode}

    async def unsubscribe(self, args: dict) -> dict:
        handler = self.subs.pop(args["sub"], None)
        if handler is not None:
            await handler.close()
        return {}

    def stats(self) -> dict:
        out: dict = {"subs": {str(k): v.stats() for k, v in self.subs.items()}, "budget": self.mux.budget.stats()}
        if self.rules is not None:
            out["chain"] = self.rules.chain
            out["stale_removed"] = list(self.rules.stale_removed)
        return out

    async def rules_for_steal(self) -> iptables.Rules:
        async with self._rules_lock:
            if self.rules is None:
                self.rules = await asyncio.get_running_loop().run_in_executor(None, iptables.Rules)
            return self.rules

    async def close(self) -> None:
        for sub in list(self.subs):
            handler = self.subs.pop(sub)
            try:
                await handler.close()
            except Exception:
                pass
        if self.rules is not None:
            rules, self.rules = self.rules, None
            await asyncio.get_running_loop().run_in_executor(None, rules.close)


# ------------------------------------------------------------------------------------------------ mirror
def yield_cpu() -> None:
    """A mirroring agent takes only CPU time the target does not want: every thread of it goes to the idle
    scheduling class (SCHED_IDLE; the lowest nice value where that is refused). A runnable task of the target
    preempts it at once, so when the target is busy the capture waits — and the kernel drops what overflows
    its buffer, counted — instead of the target's clients; when it is not, nothing changes. Stealing agents
    are on the clients' path and keep their priority."""
    # Scheduling classes only order tasks of one group: a process in the root cgroup (a local target) is
    # weighed by its session's autogroup first, so the agent lowers its own autogroup — when the group is its
    # alone (it leads its session). In a container, cgroups decide and autogroups do not apply.
    if os.getsid(0) != os.getpid():
        try:
            os.setsid()
        except OSError:
            pass
    if os.getsid(0) == os.getpid():
        try:
            with open("/proc/self/autogroup", "w") as f:
                f.write("19")
        except OSError:
            pass
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except (OSError, AttributeError):
            try:
                os.setpriority(os.PRIO_PROCESS, tid, 19)
            except OSError:
                pass


class MirrorPort:
    """Captures the client-to-server bytes of every new connection to ``port`` and streams each copy."""

    def __init__(self, owner: Incoming, sub: int, port: int) -> None:
        self.owner = owner
        self.mux = owner.mux
        self.sub = sub
        self.port = port
        self.reasm = capture.Reassembler(budget=self.mux.budget)
        self.streams: dict[bytes, CaptureStream] = {}
        self.waiting: set[CaptureStream] = set()  # copies that held back for a full batch
        self.socks: list[socket.socket] = []
        self.buf = bytearray(capture.SNAPLEN)
        self.packets = 0
        self.dropped = 0
        self.truncated = 0
        self.connections = 0
        self.lost = 0
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.socks = capture.open_capture(self.port, skip_mark=iptables.MARK_BITS)
        yield_cpu()
        loop = asyncio.get_running_loop()
        for sock in self.socks:
            loop.add_reader(sock.fileno(), self._wake, sock)
        self._timer = loop.call_later(EXPIRE_EVERY, self._expire)

    def _wake(self, sock: socket.socket) -> None:
        """The first packet after a quiet spell: read what the next few milliseconds bring in one go. Waking
        for every packet would cost the target's CPU a context switch per packet (and the kernel a wake-up
        in its receive path); the socket's buffer holds the packets meanwhile."""
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())
        loop.call_later(BATCH_WINDOW, self._drain, sock)

    def _drain(self, sock: socket.socket) -> None:
        if sock not in self.socks:
            return
        loop = asyncio.get_running_loop()
        if self._readable(sock) >= DRAIN_LIMIT:
            loop.call_soon(self._drain, sock)  # more is waiting: go on after the loop's other work
        else:
            loop.add_reader(sock.fileno(), self._wake, sock)

    def _readable(self, sock: socket.socket) -> int:
        view = memoryview(self.buf)
        now = time.monotonic()
        recv_into, parse, feed, event = sock.recv_into, capture.parse_packet, self.reasm.feed, self._event
        size = len(self.buf)
        count = 0
        try:
            while count < DRAIN_LIMIT:
                try:
                    n = recv_into(self.buf, 0, socket.MSG_TRUNC)
                except (BlockingIOError, InterruptedError):
                    break
                count += 1
                if n > size:
                    self.truncated += 1  # the sequence gap it leaves ends that connection's copy
                    continue
                seg = parse(view[:n])
                if seg is not None:
                    for ev in feed(seg, now):
                        event(ev)
        except OSError:
            pass
        finally:
            view.release()
            self.packets += count
        self.mux.flush()
        self._pump_waiting()
        return count

    def _pump_waiting(self) -> None:
        while self.waiting and not self.mux.channel_paused:
            self.waiting.pop()._pump()
            self.mux.flush()

    def _event(self, ev: Any) -> None:
        if isinstance(ev, capture.Bytes):
            stream = self.streams.get(ev.key)
            if stream is not None:
                stream.push(ev.data)
        elif isinstance(ev, capture.Opened):
            sid = self.owner.new_stream_id()
            self.streams[ev.key] = CaptureStream(self, ev.key, sid)
            self.mux.conn.send_accept(sid, self.sub, ev.peer, ev.local)
            self.connections += 1
        elif isinstance(ev, capture.Closed):
            stream = self.streams.get(ev.key)
            if stream is not None:
                if ev.reset and ev.reason:
                    self.lost += 1
                stream.finish(ev.reset)

    def _expire(self) -> None:
        for ev in self.reasm.expire(time.monotonic()):
            self._event(ev)
        for sock in self.socks:
            self.dropped += capture.dropped(sock)
        self.mux.flush()
        self._timer = asyncio.get_running_loop().call_later(EXPIRE_EVERY, self._expire)

    def stats(self) -> dict:
        for sock in self.socks:
            self.dropped += capture.dropped(sock)
        return {"mode": "mirror", "port": self.port, "packets": self.packets, "dropped": self.dropped,
                "truncated": self.truncated, "connections": self.connections, "lost": self.lost,
                "midstream": self.reasm.midstream, "open": len(self.streams)}

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
        for sock in self.socks:
            loop.remove_reader(sock.fileno())
        socks, self.socks = self.socks, []
        for sock in socks:
            sock.close()
        for stream in list(self.streams.values()):
            stream.finish(False)  # what was copied so far reaches the app, then EOF
        self.reasm.clear()
        self.mux.flush()


class CaptureStream(StreamEndpoint):
    """One mirrored connection: captured bytes go out as the stream's credit allows; replies are dropped."""

    def __init__(self, port: MirrorPort, key: bytes, sid: int) -> None:
        self.port = port
        self.mux = port.mux
        self.key = key
        self.sid = sid
        self.buf = bytearray()
        self.eof = False
        self.eof_sent = False
        self.got_eof = False
        self.closed = False
        self.mux.streams[sid] = self

    def push(self, data: bytes) -> None:
        """Holds captured bytes until the stream's credit lets them go. The target never waits for a copy:
        one that would hold more than its share of the agent's budget, or that the budget has no room for,
        is cut, and the target's own connection goes on untouched."""
        if self.closed or self.eof:
            return
        budget = self.mux.budget
        if len(self.buf) + len(data) > budget.limit // COPY_SHARE or not budget.take(len(data)):
            self.port.lost += 1
            budget.count("copies_cut")
            self._close("ENOBUFS", "the copy fell too far behind the target's traffic for the agent's memory "
                                   "budget (agent.memory_budget)")
            return
        self.buf += data
        self._pump()

    def finish(self, reset: bool) -> None:
        if self.closed:
            return
        if reset:
            self._close("ECONNRESET", "the client's connection was reset")
            return
        self.eof = True
        self._pump()

    def _pump(self) -> None:
        conn = self.mux.conn
        # The capture flushes once per batch of packets, so the channel only pauses at the end of one: until
        # then, frames already queued in this batch count as a full channel, or every copy would pour its
        # whole window into the queue at once.
        if self.closed or self.mux.channel_paused:
            return
        if conn.queued >= BATCH_QUEUE:
            self.port.waiting.add(self)  # pumped again once the batch is flushed
            return
        n = min(len(self.buf), conn.send_window(self.sid))
        if n > 0:
            conn.send_data(self.sid, bytes(self.buf[:n]))
            del self.buf[:n]
            self.mux.budget.release(n)  # now in the channel's queue, which the budget measures
        if self.eof and not self.buf and not self.eof_sent:
            self.eof_sent = True
            conn.send_eof(self.sid)
            self.port.streams.pop(self.key, None)
            self.port.reasm.forget(self.key)
            if self.got_eof:
                self._forget()

    def _close(self, errno_name: str, message: str) -> None:
        self.closed = True
        self._drop_buffer()
        self.mux.conn.send_close(self.sid, errno_name, message)
        self._forget()

    def _drop_buffer(self) -> None:
        self.mux.budget.release(len(self.buf))
        self.buf = bytearray()

    def _forget(self) -> None:
        self.closed = True
        self._drop_buffer()
        self.mux.streams.pop(self.sid, None)
        self.port.streams.pop(self.key, None)
        self.port.reasm.forget(self.key)

    # ---- channel side
    def update_reading(self) -> None:
        self._pump()

    def on_credit(self) -> None:
        self._pump()
        self.mux.flush()

    def on_channel_eof(self) -> None:
        self.got_eof = True
        if self.eof_sent:
            self._forget()

    def on_channel_close(self, errno: str | None) -> None:
        self._forget()  # the app closed its copy: the rest of this connection is not copied


# ------------------------------------------------------------------------------------------------- steal
def original_destination(sock: socket.socket) -> tuple | None:
    """Where the client connected before the REDIRECT (conntrack remembers it)."""
    try:
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            return socket.inet_ntop(socket.AF_INET, raw[4:8]), struct.unpack_from("!H", raw, 2)[0]
        raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack_from("!H", raw, 2)[0]
    except OSError:
        return None


class StealPort:
    """The agent's listener(s) for one stolen port, and the REDIRECT that feeds them."""

    def __init__(self, owner: Incoming, sub: int, port: int, flt: http1.HttpFilter | None,
                 steal_timeout: float = STEAL_TIMEOUT, header_timeout: float = HEADER_TIMEOUT) -> None:
        self.owner = owner
        self.mux = owner.mux
        self.sub = sub
        self.port = port
        self.filter = flt
        self.steal_timeout = steal_timeout
        self.header_timeout = header_timeout
        self.listeners: list[socket.socket] = []
        self.tasks: set[asyncio.Future] = set()
        self.connections = 0
        self.to_local = 0
        self.to_remote = 0
        self.passthrough = 0
        self.timed_out = 0  # passed on to the original destination (or refused) because the laptop was silent
        self.slow_heads = 0  # passed on to the original destination because the client sent its head too slowly
        self.rules: iptables.Rules | None = None

    async def start(self) -> None:
        v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        v4.bind(("0.0.0.0", 0))
        v4.listen(1024)
        self.listeners.append(v4)
        v6_port = None
        try:
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            v6.bind(("::", 0))
            v6.listen(1024)
            self.listeners.append(v6)
            v6_port = v6.getsockname()[1]
        except OSError:
            pass
        loop = asyncio.get_running_loop()
        try:
            self.rules = await self.owner.rules_for_steal()
            await loop.run_in_executor(None, self.rules.add, self.port, v4.getsockname()[1], v6_port)
        except BaseException:
            for sock in self.listeners:
                sock.close()
            self.listeners = []
            raise
        for sock in self.listeners:
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._acceptable, sock)

    def _acceptable(self, listener: socket.socket) -> None:
        for _ in range(64):
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            self.connections += 1
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # asyncio leaves sockets of proto 0 alone
            orig = original_destination(sock) or (sock.getsockname()[0], self.port)
            peer = (peer[0], peer[1])
            if self.filter is None:
                self._track(self._steal_whole(sock, peer, orig))
            else:
                self._track(Splitter(self, sock, peer, orig).run())

    def _track(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def open_local(self, sock: socket.socket, peer: tuple, orig: tuple, guarded: bool = False) -> TcpRelay:
        """Streams ``sock`` to the session, which connects it to the local app; ``guarded``: passed on to
        ``orig`` if the local side does not answer in time (:class:`StolenRelay`)."""
        sid = self.owner.new_stream_id()
        relay = StolenRelay(self, sid, orig) if guarded else TcpRelay(self.mux, sid)
        self.mux.conn.send_accept(sid, self.sub, peer, orig)
        self.mux.flush()
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: relay, sock)
        except BaseException:
            self.mux.streams.pop(sid, None)
            self.mux.conn.send_close(sid, "ECONNRESET", "the stolen connection failed")
            self.mux.flush()
            sock.close()
            raise
        relay.start()
        return relay

    async def _steal_whole(self, sock: socket.socket, peer: tuple, orig: tuple) -> None:
        self.to_local += 1
        try:
            await self.open_local(sock, peer, orig, guarded=True)
        except OSError:
            pass

    async def pass_on(self, client: _Peer, orig: tuple) -> None:
        """The rest of ``client``'s connection goes to the original destination, with what it sent so far
        (``client.buf``) first."""
        try:
            reader, writer = await self.open_remote(orig)
        except OSError:
            client.close()
            return
        up = _Peer(reader, writer)
        try:
            await splice(client, up)
        finally:
            up.close()
            client.close()

    async def open_remote(self, orig: tuple) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the original destination that this agent's rules (and earlier ones) let through."""
        family = socket.AF_INET6 if ":" in orig[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            assert self.rules is not None
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.rules.forward_mark)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, orig)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock, limit=READ)

    def stats(self) -> dict:
        return {"mode": "steal", "port": self.port, "filtered": self.filter is not None,
                "connections": self.connections, "to_local": self.to_local, "to_remote": self.to_remote,
                "passthrough": self.passthrough, "timed_out": self.timed_out, "slow_heads": self.slow_heads,
                "chain": self.rules.chain if self.rules else ""}

    async def close(self) -> None:
        """New connections go to the pod's app again; those already stolen finish where they are."""
        loop = asyncio.get_running_loop()
        if self.rules is not None:
            await loop.run_in_executor(None, self.rules.remove, self.port)
        for sock in self.listeners:
            loop.remove_reader(sock.fileno())
            sock.close()
        self.listeners = []


class ListenPort(StealPort):
    """A port of the agent's own in the target (``mirror-py port-forward --reverse``): every connection is
    streamed to the session, which connects it to an address on the laptop. Nothing listened there before,
    so there is no rule to add and no original destination to fall back to."""

    def __init__(self, owner: Incoming, sub: int, port: int, bind: str) -> None:
        super().__init__(owner, sub, port, None)
        self.bind = bind

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.bind, self.port))
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        sock.setblocking(False)
        self.listeners.append(sock)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._acceptable, sock)

    async def _steal_whole(self, sock: socket.socket, peer: tuple, orig: tuple) -> None:
        self.to_local += 1
        try:
            await self.open_local(sock, peer, orig)
        except OSError:
            pass

    def stats(self) -> dict:
        return {"mode": "listen", "port": self.port, "bind": self.bind, "connections": self.connections}


class StolenRelay(TcpRelay):
    """An unfiltered stolen connection, relayed whole to the local app once that app has answered.

    Until its first byte (or EOF) comes back, the client's bytes are also kept, up to :data:`REPLAY_LIMIT`. If
    the local side stays silent for the steal timeout (a hung app, a laptop that went away, a connect that
    never completes), the client's socket is taken back from the stream and the connection goes to the
    original destination with those bytes first: the client has received nothing yet, so the target's answer
    is the only one it sees. A client that sent more than was kept cannot be passed on: it waits as long as
    the local side keeps taking its bytes (credit comes back), and is reset after a steal timeout without."""

    def __init__(self, port: StealPort, sid: int, orig: tuple) -> None:
        super().__init__(port.mux, sid)
        self.port = port
        self.orig = orig
        self.replay: bytearray | None = bytearray()
        self.answered = False
        self.progress = False  # the local side took bytes since the timer was last armed
        self._timer = asyncio.get_running_loop().call_later(port.steal_timeout, self._silent)

    def _answer(self) -> None:
        if not self.answered:
            self.answered = True
            self.replay = None
            self._timer.cancel()

    def data_received(self, data: bytes) -> None:
        if not self.answered and self.replay is not None:
            if len(self.replay) + len(data) <= REPLAY_LIMIT:
                self.replay += data
            else:
                self.replay = None
        super().data_received(data)

    def on_credit(self) -> None:
        self.progress = True
        super().on_credit()

    def on_channel_data(self, data: bytes) -> None:
        self._answer()
        super().on_channel_data(data)

    def on_channel_eof(self) -> None:
        self._answer()
        super().on_channel_eof()

    def on_channel_close(self, errno: str | None) -> None:
        self._answer()
        super().on_channel_close(errno)

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
        super().connection_lost(exc)

    def _silent(self) -> None:
        t = self.transport
        if self.answered or self._closed or self.mux.streams.get(self.sid) is not self:
            return  # answered, ended, or never opened (the stream was forgotten)
        if t is None:  # not attached yet: look again shortly
            self._timer = asyncio.get_running_loop().call_later(0.1, self._silent)
            return
        if self.replay is None and self.progress:  # a large upload the local side is taking: not silent
            self.progress = False
            self._timer = asyncio.get_running_loop().call_later(self.port.steal_timeout, self._silent)
            return
        self.port.timed_out += 1
        self._closed = True  # the relay's own callbacks do nothing from here on
        self.mux.streams.pop(self.sid, None)
        self.mux.conn.send_close(self.sid, "ETIMEDOUT", f"the local app did not answer in "
                                 f"{self.port.steal_timeout:g} s; the connection went to the target's app")
        self.mux.flush()
        sock = t.get_extra_info("socket")
        if self.replay is None or sock is None:
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            t.abort()
            self._done()
            return
        # Another descriptor for the same connection: the transport closes its own, the connection lives on.
        dup = socket.socket(sock.family, sock.type, sock.proto, os.dup(sock.fileno()))
        t.abort()
        self._done()
        self.port._track(self._pass_on(dup, bytes(self.replay)))

    async def _pass_on(self, sock: socket.socket, sent: bytes) -> None:
        try:
            sock.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=sock, limit=READ)
        except OSError:
            sock.close()
            return
        client = _Peer(reader, writer)
        client.buf += sent
        await self.port.pass_on(client, self.orig)


async def splice(a: _Peer, b: _Peer) -> None:
    """Raw bytes both ways until both directions end (what either side has buffered goes first)."""

    async def pipe(src: _Peer, dst: _Peer) -> None:
        try:
            if src.buf:
                dst.write(bytes(src.buf))
                src.buf.clear()
            while True:
                data = await src.reader.read(READ)
                if not data:
                    break
                dst.write(data)
                await dst.drain()
            if not dst.writer.is_closing() and dst.writer.can_write_eof():
                dst.writer.write_eof()
        except OSError:
            pass

    await asyncio.gather(pipe(a, b), pipe(b, a))


class _SlowHead(Exception):
    """A client took longer than the header timeout to send one request head."""


class _Peer:
    """One side of a split connection, with the bytes read but not yet used."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self.fresh = True

    async def fill(self) -> bool:
        data = await self.reader.read(READ)
        if not data:
            return False
        self.buf += data
        return True

    def write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    async def drain(self) -> None:
        if not self.writer.is_closing():
            await self.writer.drain()

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass


class Splitter:
    """Routes each HTTP/1.x request of one stolen connection to the local app or to the original destination."""

    def __init__(self, port: StealPort, sock: socket.socket, peer: tuple, orig: tuple) -> None:
        self.port = port
        self.sock = sock
        self.peer = peer
        self.orig = orig
        self.client: _Peer | None = None
        self.upstreams: dict[bool, _Peer] = {}  # True: the local app, False: the original destination
        self._replay: bytearray | None = None  # the current request as sent to the local app, to pass it on
        self._body_progress = 0  # chunks of the current request's body the upstream has taken

    async def run(self) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=self.sock, limit=READ)
            self.client = _Peer(reader, writer)
            if await self._is_http():
                await self._requests()
            else:
                self.port.passthrough += 1
                up = await self._upstream(False)
                if up is not None:
                    await self._splice(up)
        except (OSError, http1.HttpError, asyncio.IncompleteReadError):
            pass
        finally:
            for up in self.upstreams.values():
                up.close()
            if self.client is not None:
                self.client.close()
            else:
                self.sock.close()

    async def _is_http(self) -> bool:
        client = self.client
        assert client is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FIRST_BYTES_TIMEOUT
        trickle = False
        while True:
            verdict = http1.looks_like_http1(bytes(client.buf[: http1.MAX_LINE + 1]))
            if verdict is not None:
                return verdict
            if client.buf and not trickle:  # some bytes, too few to tell: the head's own bound from now on
                trickle = True
                deadline = loop.time() + self.port.header_timeout
            try:
                more = await asyncio.wait_for(client.fill(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return False
            if not more:
                return False

    async def _upstream(self, local: bool) -> _Peer | None:
        up = self.upstreams.get(local)
        if up is not None and not up.reader.at_eof() and not up.writer.is_closing():
            up.fresh = False
            return up
        if up is not None:
            up.close()
            del self.upstreams[local]
        try:
            if local:
                a, b = socket.socketpair()
                await self.port.open_local(a, self.peer, self.orig)
                reader, writer = await asyncio.open_connection(sock=b, limit=READ)
            else:
                reader, writer = await self.port.open_remote(self.orig)
        except OSError:
            return None
        up = self.upstreams[local] = _Peer(reader, writer)
        return up

    def _drop(self, local: bool) -> None:
        up = self.upstreams.pop(local, None)
        if up is not None:
            up.close()

    async def _read_head(self, peer: _Peer, parse: Any) -> Any:
        while True:
            got = parse(peer.buf)
            if got is not None:
                head, n = got
                del peer.buf[:n]
                return head
            if not await peer.fill():
                if peer.buf:
                    raise http1.HttpError("the connection ended inside a head")
                return None

    async def _requests(self) -> None:
        client = self.client
        assert client is not None
        assert self.port.filter is not None
        while True:
            try:
                head = await self._request_head()
            except _SlowHead:
                # Nothing of this request went anywhere yet: the rest of the connection is the target's.
                self.port.slow_heads += 1
                up = await self._upstream(False)
                if up is not None:
                    await self._splice(up)
                return
            if head is None:
                return
            local = self.port.filter.matches(head)
            if local:
                self.port.to_local += 1
            else:
                self.port.to_remote += 1
            kind, length = head.body()
            self._replay = bytearray(head.raw) if local else None
            self._body_progress = 0
            for attempt in (0, 1):
                up = await self._upstream(local)
                if up is None:
                    client.write(_BAD_GATEWAY)
                    await client.drain()
                    return
                up.write(head.raw)
                framer = http1.BodyFramer(kind, length)
                # Bodies are forwarded alongside the response (Expect: 100-continue needs both at once); most
                # requests have none, and a task per request would be most of their cost.
                body = None if framer.done else asyncio.ensure_future(self._forward_body(framer, up))
                outcome = await self._response(head, up, self.port.steal_timeout if local else None)
                if outcome == "silent":
                    local, up, outcome = await self._pass_request_on(head, body)
                    body = None
                    if up is None:
                        return
                    break
                if outcome == "retry" and attempt == 0 and body is None and not up.fresh:
                    self._drop(local)  # a kept-alive upstream closed in between: try a new connection once
                    continue
                break
            if outcome in ("close", "retry"):
                if body is not None:
                    body.cancel()
                if outcome == "retry":
                    client.write(_BAD_GATEWAY)
                await client.drain()
                return
            if body is not None:
                await body
            if outcome == "upgrade":
                await self._splice(up)
                return
            if outcome == "drop":
                self._drop(local)

    async def _request_head(self) -> http1.RequestHead | None:
        """The next request head, or None at the end of the connection; :class:`_SlowHead` when the client
        takes longer than the header timeout from its first byte (a slow or malicious client must not hold
        the target's port)."""
        client = self.client
        assert client is not None
        loop = asyncio.get_running_loop()
        deadline = None
        while True:
            got = http1.parse_request_head(client.buf)
            if got is not None:
                head, n = got
                del client.buf[:n]
                return head
            if client.buf and deadline is None:
                deadline = loop.time() + self.port.header_timeout
            if deadline is None:
                more = await client.fill()
            else:
                try:
                    more = await asyncio.wait_for(client.fill(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    raise _SlowHead() from None
            if not more:
                if client.buf:
                    raise http1.HttpError("the connection ended inside a head")
                return None

    async def _pass_request_on(self, head: http1.RequestHead, body: asyncio.Future | None
                               ) -> tuple[bool, _Peer | None, str]:
        """The local app did not answer one request in time: it goes to the original destination, when all of
        it was kept (the client has received nothing of this request's answer yet), else the client gets a
        504. Returns the route, the upstream that answers, and the outcome of the answer."""
        client = self.client
        assert client is not None
        self.port.timed_out += 1
        self._drop(True)
        whole = self._replay is not None and (body is None or body.done())
        if body is not None and not body.done():
            body.cancel()
        up = await self._upstream(False) if whole else None
        if up is None:
            client.write(_GATEWAY_TIMEOUT)
            await client.drain()
            return False, None, "close"
        assert self._replay is not None
        up.write(bytes(self._replay))
        return False, up, await self._response(head, up)

    async def _forward_body(self, framer: http1.BodyFramer, up: _Peer) -> None:
        client = self.client
        assert client is not None
        while not framer.done:
            if not client.buf and not await client.fill():
                return  # the client stopped sending inside the body
            n = framer.feed(client.buf)
            if n:
                if self._replay is not None:
                    self._replay += client.buf[:n]
                    if len(self._replay) > REPLAY_LIMIT:
                        self._replay = None  # too large to pass on if the local app stays silent
                up.write(bytes(client.buf[:n]))
                del client.buf[:n]
                try:
                    await up.drain()
                except OSError:
                    pass
                self._body_progress += 1

    async def _response(self, head: http1.RequestHead, up: _Peer, timeout: float | None = None) -> str:
        """Relays the response(s) to one request: ``keep``, ``drop`` (the upstream closes after it), ``close``
        (the client connection ends), ``upgrade`` (raw bytes from now on), ``retry`` (nothing came) or
        ``silent`` (no response head within ``timeout``; nothing was sent to the client)."""
        client = self.client
        assert client is not None
        sent = False
        while True:
            if timeout is not None and not sent:
                # Silent means: no response head for ``timeout`` since the request, or since the app last took
                # a piece of its body (a large upload is not a silent app).
                while True:
                    progress = self._body_progress
                    try:
                        resp = await asyncio.wait_for(self._read_head(up, http1.parse_response_head), timeout)
                        break
                    except asyncio.TimeoutError:
                        if self._body_progress == progress:
                            return "silent"
            else:
                resp = await self._read_head(up, http1.parse_response_head)
            if resp is None:
                return "close" if sent else "retry"
            sent = True
            if 100 <= resp.status < 200:
                client.write(resp.raw)
                await client.drain()
                if resp.status == 101:
                    return "upgrade"
                continue
            kind, length = resp.body(head.method)
            framer = http1.BodyFramer(kind, length)
            n = framer.feed(up.buf)  # the head and what came with it in one write
            client.write(resp.raw + bytes(up.buf[:n]))
            del up.buf[:n]
            await client.drain()
            while not framer.done:
                if not up.buf and not await up.fill():
                    return "close"  # until-close body, or a response cut short
                n = framer.feed(up.buf)
                client.write(bytes(up.buf[:n]))
                del up.buf[:n]
                await client.drain()
            if head.method == "CONNECT" and 200 <= resp.status < 300:
                return "upgrade"
            if resp.closes:
                return "close"
            return "keep"

    async def _splice(self, up: _Peer) -> None:
        assert self.client is not None
        await splice(self.client, up)
