"""The session's half of incoming traffic: subscriptions for the app's listeners, and the connections the agent
opens for them.

When the shim reports a listener (``listen``), the session subscribes the target port with the agent, once
per port however many of the app's sockets listen for it (asyncio binds IPv4 and IPv6 separately, forked
workers share one). Each connection the agent announces (an ``accept`` message on an even stream id) is
connected to one of those listeners from a loopback socket whose address the session remembers, so that the
shim's ``accept`` can ask who the client really was (``incoming_peer``). Mirrored connections are one-way:
what the app answers is read and dropped here.

A listener may live in several processes (fork, exec), so the shim's ``unlisten`` only drops a listener once
no process holds the socket: the session looks the socket's inode up in ``/proc/net/tcp{,6}``, and sweeps
the subscriptions the same way, so an app that exits without closing leaves nothing subscribed.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mirror_py_agent import protocol as p
from mirror_py_agent.relay import TcpRelay, errno_name

from .agent_link import RemoteError
from .relays import _key
from .rpc_server import RpcError

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger("mirror_py.session")
progress = logging.getLogger("mirror_py.progress")

SWEEP_EVERY = 2.0


class MirrorSink(TcpRelay):
    """A mirrored connection: the client's bytes reach the app; the app's replies are read and dropped (the
    target's own app has already answered the client)."""

    #: The client's end of the connection (FIN or reset) reaches the app once the app has been quiet this long,
    #: at most END_WAIT_MAX seconds after it came. The copy trails the client: a client that closes right after
    #: its answer (the target's app answered it already) would otherwise end the app's connection while its
    #: request is still being read, and the app would drop the request (grpc: "Socket closed") unserved.
    END_QUIET = 0.5
    END_WAIT_MAX = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ends: list[Any] = []  # the client's end, held back
        self._quiet_since = 0.0

    def on_channel_eof(self) -> None:
        self._hold_end(super().on_channel_eof)

    def on_channel_close(self, errno: str | None) -> None:
        self._hold_end(lambda: TcpRelay.on_channel_close(self, errno))

    def _hold_end(self, end: Any) -> None:
        self._ends.append(end)
        if len(self._ends) == 1:
            loop = asyncio.get_running_loop()
            self._quiet_since = max(self._quiet_since, loop.time())
            self._check_end(loop.time() + self.END_WAIT_MAX)

    def _check_end(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now < deadline and now - self._quiet_since < self.END_QUIET:
            loop.call_later(0.1, self._check_end, deadline)
            return
        ends, self._ends = self._ends, []
        for end in ends:
            end()

    def data_received(self, data: bytes) -> None:
        self._quiet_since = asyncio.get_running_loop().time()


class AppListener:
    """One of the app's listening sockets. Connections are handed to it no faster than it accepts them: a
    listener's accept queue is its backlog (http.server's is 5), and connections beyond it are dropped or
    stall, under SYN cookies even lost. The shim's ``incoming_peer`` question is the sign of an accept."""

    def __init__(self, host: str, port: int, family: int, backlog: int) -> None:
        self.host = host
        self.port = port
        self.family = family
        self.slots = asyncio.Semaphore(max(1, min(backlog, 128) - 1))


@dataclass
class PortSub:
    port: int  # the target's port
    sub: int
    mode: str
    listeners: dict[int, AppListener] = field(default_factory=dict)  # by inode
    ready: asyncio.Future | None = None
    # A reverse forward (mode "listen"): where in the target it listens, the laptop address its connections
    # go to, and the process that asked for it (it is dropped when that process ends).
    bind: str | None = None
    forward_to: tuple[str, int] | None = None
    owner: int | None = None


class _Slot:
    """One connection's place in a listener's accept queue, given back once (accepted, closed or timed out:
    an app that accepts without asking, a child without the shim, must not stall the others for long)."""

    TIMEOUT = 2.0

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self.slots = slots
        self.held = False
        self.done = False
        self.timer: asyncio.TimerHandle | None = None

    async def acquire(self) -> None:
        await self.slots.acquire()
        self.held = True
        if self.done:  # released (the stream ended) while waiting
            self.release()
            return
        self.timer = asyncio.get_running_loop().call_later(self.TIMEOUT, self.release)

    def release(self) -> None:
        self.done = True
        if self.held:
            self.held = False
            self.slots.release()
            if self.timer is not None:
                self.timer.cancel()


def live_inodes() -> set[int] | None:
    """Inodes of this network namespace's TCP sockets, or None when /proc cannot tell."""
    found: set[int] = set()
    seen = False
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) > 9:
                        found.add(int(parts[9]))
            seen = True
        except (OSError, ValueError):
            continue
    return found if seen else None


class Incoming:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.cfg = session.cfg.network.incoming
        self.ports: dict[int, PortSub] = {}
        self.by_sub: dict[int, PortSub] = {}
        self.by_inode: dict[int, PortSub] = {}
        self.peers: dict[tuple[str, int], tuple[list, list, Any]] = {}  # session socket -> (client, address, release)
        self._next_sub = 1
        self._tasks: set[asyncio.Future] = set()
        self._sweeper: asyncio.Task | None = None
        self.probes: list[dict] = []  # the target container's probes (Kubernetes), for the steal warning

    def attach(self, link: Any) -> None:
        """Takes the agent's incoming streams, and has it remove what a crashed session left behind."""
        link.on_accept = self.on_accept
        task = asyncio.ensure_future(clean_stale(self.session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def restore(self, link: Any) -> None:
        """After a reconnect: the new agent takes the same subscriptions (same ids, modes and filters)."""
        self.attach(link)
        for ps in list(self.ports.values()):
            flt = self.cfg.http_filter
            spec = flt.to_json() if flt is not None and ps.mode == "steal" and (
                flt.ports is None or ps.port in flt.ports) else None
            try:
                await link.request("incoming_subscribe", {"sub": ps.sub, "port": ps.port, "mode": ps.mode,
                                                          "filter": spec, "bind": ps.bind, **self._timeouts()})
            except RemoteError as exc:
                log.warning("%s", self._explain(exc, ps.mode, ps.port))

    def _timeouts(self) -> dict:
        """How long a stolen client may wait for the app, and a filtered port's client to send a head."""
        return {"steal_timeout": self.cfg.steal_timeout, "header_timeout": self.cfg.header_timeout}

    # ------------------------------------------------------------------------------------- shim requests
    def handlers(self) -> dict:
        return {"listen": self.listen, "unlisten": self.unlisten, "incoming_peer": self.peer,
                "incoming_stats": self.stats, "reverse": self.reverse, "unreverse": self.unreverse}

    async def reverse(self, req: dict) -> dict:
        """A port of the target of its own, forwarded to ``host:host_port`` on the laptop while process ``pid``
        lives (``mirror-py port-forward --reverse``)."""
        bind, port, host, host_port, pid = req["bind"], req["port"], req["host"], req["host_port"], req["pid"]
        if not isinstance(bind, str) or not isinstance(host, str) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in (port, host_port, pid)):
            raise RpcError("EINVAL", "reverse takes bind and host strings, port, host_port and pid integers")
        if port in self.ports:
            raise RpcError("EADDRINUSE", f"port {port} of the target is already taken by this session")
        link = self.session._link()
        sub = self._next_sub
        self._next_sub += 1
        try:
            res = await link.request("incoming_subscribe", {"sub": sub, "port": port, "mode": "listen",
                                                            "bind": bind, **self._timeouts()})
        except RemoteError as exc:
            raise RpcError(exc.name, exc.message) from None
        ps = PortSub(int(res.get("port") or port), sub, "listen", bind=bind, forward_to=(host, host_port),
                     owner=pid)
        self.ports[ps.port] = ps
        self.by_sub[sub] = ps
        progress.info("port %d of the target is forwarded to %s:%d here", ps.port, host, host_port)
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep())
        return {"sub": sub, "port": ps.port}

    async def unreverse(self, req: dict) -> dict:
        ps = self.by_sub.get(int(req["sub"]))
        if ps is not None and ps.forward_to is not None:
            await self._unsubscribe(ps)
        return {}

    async def stats(self, req: dict) -> dict:
        """What the agent captured, stole and lost, per subscription (for tests and troubleshooting)."""
        try:
            return await self.session._link().request("incoming_stats", {})
        except RemoteError as exc:
            raise RpcError(exc.name, exc.message) from None

    async def listen(self, req: dict) -> dict:
        inode, port = int(req["inode"]), int(req["port"])
        local = req["local"]
        where = AppListener(str(local[0]), int(local[1]), int(req.get("family", socket.AF_INET)),
                            int(req.get("backlog") or 128))
        mode = self.cfg.mode
        if mode == "off":
            return {}
        ps = self.ports.get(port)
        if ps is not None:
            if ps.ready is not None and not ps.ready.done():
                await asyncio.shield(ps.ready)
            if self.ports.get(port) is ps:
                ps.listeners[inode] = where
                self.by_inode[inode] = ps
                return {"sub": ps.sub, "mode": ps.mode}
        link = self.session._link()
        sub = self._next_sub
        self._next_sub += 1
        flt = self.cfg.http_filter
        spec = flt.to_json() if flt is not None and mode == "steal" and (flt.ports is None or port in flt.ports) \
            else None
        ps = PortSub(port, sub, mode, {inode: where}, asyncio.get_running_loop().create_future())
        self.ports[port] = ps
        self.by_sub[sub] = ps
        self.by_inode[inode] = ps
        try:
            await link.request("incoming_subscribe", {"sub": sub, "port": port, "mode": mode, "filter": spec,
                                                      **self._timeouts()})
        except RemoteError as exc:
            self._drop(ps)
            ps.ready.set_result(None)  # type: ignore[union-attr]
            text = self._explain(exc, mode, port)
            log.info("%s", text)
            return {"warnings": [text]}
        ps.ready.set_result(None)  # type: ignore[union-attr]
        warnings = self._probe_warnings(port) if mode == "steal" and spec is None else []
        what = "mirrored to" if mode == "mirror" else ("stolen by a filter for" if spec else "stolen by")
        progress.info("port %d of the target is %s the app's listener on %s:%d", port, what, where.host, where.port)
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep())
        return {"sub": sub, "mode": mode, "warnings": warnings}

    def _explain(self, exc: RemoteError, mode: str, port: int) -> str:
        hint = ""
        if exc.name == "EPERM":
            placement = getattr(self.session.placement, "mode", None)
            if placement == "exec":
                cap = "NET_RAW" if "NET_RAW" in exc.message else "NET_ADMIN"
                hint = (f"; agent mode exec runs the agent in the target container, which has no {cap}: use "
                        "--agent-mode ephemeral (its container gets NET_ADMIN and NET_RAW) or --agent-mode job")
            elif placement is None:
                hint = "; for a local target, run mirror-py as root"
        return f"{mode} of port {port} failed, the target keeps its traffic: {exc.message}{hint}"

    def _probe_warnings(self, port: int) -> list[str]:
        out = []
        for probe in self.probes:
            if probe.get("port") == port:
                out.append(
                    f"stealing port {port} without an HTTP filter takes the {probe['kind']} probe of container "
                    f"{probe['container']} ({probe['handler']} on port {port}) too: the kubelet's checks now reach "
                    "your local app, and the pod goes unready or is restarted if it does not answer them; add "
                    "network.incoming.http_filter or use mode mirror")
        return out

    async def unlisten(self, req: dict) -> dict:
        inode = int(req["inode"])
        live = live_inodes()
        if live is not None and inode in live:
            return {"kept": True}  # another process still holds the socket
        await self._forget_listener(inode)
        return {}

    async def peer(self, req: dict) -> dict:
        found = self.peers.get(_key(str(req["addr"][0]), int(req["addr"][1])))
        if found is None:
            return {}
        found[2]()  # accepted: the listener has room for the next one
        return {"peer": found[0], "local": found[1]}

    async def _forget_listener(self, inode: int) -> None:
        ps = self.by_inode.pop(inode, None)
        if ps is None:
            return
        ps.listeners.pop(inode, None)
        if ps.listeners:
            return
        await self._unsubscribe(ps)

    async def _unsubscribe(self, ps: PortSub) -> None:
        self._drop(ps)
        link = self.session.link
        if link is not None and link.failure is None:
            try:
                await link.request("incoming_unsubscribe", {"sub": ps.sub})
            except RemoteError as exc:
                log.debug("unsubscribing port %d: %s", ps.port, exc.message)
        what = {"mirror": "mirrored", "steal": "stolen"}.get(ps.mode, "forwarded")
        progress.info("port %d of the target is no longer %s", ps.port, what)

    def _drop(self, ps: PortSub) -> None:
        if self.ports.get(ps.port) is ps:
            del self.ports[ps.port]
        self.by_sub.pop(ps.sub, None)
        for inode in list(ps.listeners):
            if self.by_inode.get(inode) is ps:
                del self.by_inode[inode]

    async def _sweep(self) -> None:
        """Listeners of processes that ended without closing them are forgotten."""
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            for ps in [ps for ps in self.ports.values() if ps.owner is not None and not _alive(ps.owner)]:
                await self._unsubscribe(ps)
            if not self.by_inode:
                continue
            live = live_inodes()
            if live is None:
                continue
            for inode in [i for i in self.by_inode if i not in live]:
                await self._forget_listener(inode)

    # ---------------------------------------------------------------------------------- agent streams
    def on_accept(self, ev: p.Accept) -> None:
        """A connection reached the target: runs inside the channel's event batch, so the relay must exist
        before the next event (its data) is dispatched."""
        link = self.session.link
        assert link is not None
        ps = self.by_sub.get(ev.sub)
        if ps is not None:
            self.session.counters.incoming[ps.mode] += 1
        if ps is not None and ps.forward_to is not None:
            forwarded = TcpRelay(link.mux, ev.stream)
            task = asyncio.ensure_future(self._connect_here(forwarded, ev, ps.forward_to))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if ps is None or not ps.listeners:
            link.conn.send_close(ev.stream, "ECONNREFUSED", "the app no longer listens for it")
            link.mux.flush()
            return
        listener = next(iter(ps.listeners.values()))
        holder: list[tuple[str, int]] = []
        slot = _Slot(listener.slots)

        def done() -> None:
            slot.release()
            for key in holder:
                self.peers.pop(key, None)

        relay_class = MirrorSink if ps.mode == "mirror" else TcpRelay
        relay = relay_class(link.mux, ev.stream, on_done=done)
        task = asyncio.ensure_future(self._connect(relay, ev, listener, holder, slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, relay: TcpRelay, ev: p.Accept, listener: AppListener, holder: list,
                       slot: _Slot) -> None:
        link = self.session.link
        assert link is not None
        loop = asyncio.get_running_loop()
        host, port = listener.host, listener.port
        await slot.acquire()
        sock = socket.socket(listener.family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.bind(("::1" if listener.family == socket.AF_INET6 else "127.0.0.1", 0))
            key = _key(*sock.getsockname()[:2])
            holder.append(key)
            self.peers[key] = (list(ev.peer), list(ev.local), slot.release)  # before the app can accept and ask
            await loop.sock_connect(sock, (host, port))
            await loop.create_connection(lambda: relay, sock=sock)
            relay.start()
        except OSError as exc:
            log.debug("incoming connection from %s: the app's listener on %s:%d: %s", ev.peer, host, port, exc)
            slot.release()
            sock.close()
            for k in holder:
                self.peers.pop(k, None)
            if link.mux.streams.pop(ev.stream, None) is not None:
                link.conn.send_close(ev.stream, errno_name(exc), f"the app's listener on {host}:{port}: {exc}")
                link.mux.flush()

    async def _connect_here(self, relay: TcpRelay, ev: p.Accept, where: tuple[str, int]) -> None:
        """A connection to a reverse-forwarded port, joined to ``where`` on the laptop (this process is not
        interposed: its names and addresses are the laptop's)."""
        link = self.session.link
        assert link is not None
        loop = asyncio.get_running_loop()
        sock: socket.socket | None = None
        try:
            infos = await loop.getaddrinfo(where[0], where[1], type=socket.SOCK_STREAM)
            error: OSError = OSError(errno.EADDRNOTAVAIL, f"{where[0]} has no address")
            for family, kind, proto, _, address in infos:
                sock = socket.socket(family, kind, proto)
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, address)
                    break
                except OSError as exc:
                    sock.close()
                    sock, error = None, exc
            if sock is None:
                raise error
            await loop.create_connection(lambda: relay, sock=sock)
            relay.start()
        except OSError as exc:
            if sock is not None:
                sock.close()
            log.warning("a connection from %s to the target's port could not reach %s:%d here: %s",
                        ev.peer[0] if ev.peer else "?", where[0], where[1], exc.strerror or exc)
            if link.mux.streams.pop(ev.stream, None) is not None:
                link.conn.send_close(ev.stream, errno_name(exc), f"{where[0]}:{where[1]} on the laptop: {exc}")
                link.mux.flush()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._tasks):
            task.cancel()
        self.ports.clear()
        self.by_sub.clear()
        self.by_inode.clear()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process: it exists
    return True


async def clean_stale(session: Session) -> None:
    """Asks the agent to remove the rules a crashed session left in the target; says what it found."""
    link = session.link
    if link is None or link.hello is None or "incoming" not in link.hello.capabilities:
        return
    try:
        res = await link.request("incoming_clean", {})
    except (RemoteError, RpcError):
        return
    removed = res.get("removed") if isinstance(res, dict) else None
    if removed:
        log.warning("removed the steal rules that a crashed mirror-py session left in the target: %s",
                    ", ".join(removed))
