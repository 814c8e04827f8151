"""Relay endpoints: where the app's real kernel sockets connect to instead of the remote address.

A tunneled TCP connection is the app's own socket connected to the session's loopback listener; the session
knows which stream it belongs to from the socket's local address, which the shim reported (after binding the
socket) in its connect request. No byte of the app's stream is added or changed, so TLS, select and asyncio
work on it as on any socket.

A tunneled UDP socket talks to a loopback datagram socket of the session. For a connected UDP socket the
datagrams pass unchanged; for an unconnected one each datagram carries its far address in a small prefix that
the shim's ``sendto``/``recvfrom`` add and remove. A connected socket may still send elsewhere (Linux allows
``sendto`` with an address on it): those datagrams carry the prefix and go to the session's door, which finds
the socket's relay by the datagram's source address.

Every endpoint exists for both families on loopback — 127.0.0.1 and ::1 — because an IPv6 socket with
``IPV6_V6ONLY`` cannot reach an IPv4 address, not even a v4-mapped one; the app's socket is given the endpoint of
the address it is bound to.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket

from mirror_py_agent import protocol as p
from mirror_py_agent.relay import Mux, StreamEndpoint, TcpRelay

log = logging.getLogger("mirror_py.session")

# How long a stream waits for the app's socket to reach the relay before it is dropped.
ATTACH_TIMEOUT = 30.0


LOOPBACKS = (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6))


def _key(host: str, port: int) -> tuple[str, int]:
    if host.startswith("::ffff:"):
        host = host[7:]
    return host, port


def family_of(app_host: str) -> int:
    """The family of the loopback endpoint an app socket bound to ``app_host`` reaches: IPv6 only for a pure
    IPv6 address (a v4-mapped one is IPv4 on the wire)."""
    return socket.AF_INET6 if ":" in _key(app_host, 0)[0] else socket.AF_INET


def app_socket_open(app: tuple[str, int]) -> bool:
    """Whether some socket still holds an app socket's address (``_key`` form).

    The app closing one descriptor of a UDP socket does not end the socket: a forked child, or a descriptor the
    shim never saw, may still hold it, and its relay must live on. A UDP address is free the moment its last
    holder closes it, so a bind to it says which: refused means held. (It works on any OS, unlike reading
    /proc.)"""
    with socket.socket(family_of(app[0]), socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(app)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


class _Acceptor(asyncio.Protocol):
    """Looks up which stream an accepted connection belongs to and hands the transport to its relay."""

    def __init__(self, listener: TcpRelayListener) -> None:
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        peer = transport.get_extra_info("peername")
        relay = self.listener.pending.pop(_key(peer[0], peer[1]), None) if peer else None
        if relay is None:
            log.warning("dropping an unexpected connection to the relay from %s", peer)
            transport.close()
            return
        transport.set_protocol(relay)  # type: ignore[attr-defined]
        relay.attach(transport)  # type: ignore[arg-type]


class TcpRelayListener:
    def __init__(self, mux: Mux) -> None:
        self.mux = mux
        self.pending: dict[tuple[str, int], TcpRelay] = {}
        self.servers: list[asyncio.AbstractServer] = []
        self.addresses: dict[int, tuple[str, int]] = {}  # family -> loopback endpoint

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for host, family in LOOPBACKS:
            try:
                server = await loop.create_server(lambda: _Acceptor(self), host, 0, backlog=1024)
            except OSError as exc:
                if family == socket.AF_INET:
                    raise
                log.info("no IPv6 loopback relay (%s): IPv6-only app sockets cannot be tunneled", exc)
                continue
            self.servers.append(server)
            self.addresses[family] = server.sockets[0].getsockname()[:2]

    def address_for(self, app_host: str) -> tuple[str, int]:
        """The endpoint an app socket bound to ``app_host`` connects to."""
        family = family_of(app_host)
        if family not in self.addresses:
            raise OSError(errno.ENETUNREACH, os.strerror(errno.ENETUNREACH))
        return self.addresses[family]

    def expect(self, local: tuple[str, int], sid: int) -> TcpRelay:
        """Registers the stream before the shim connects, so the relay exists when the connection arrives;
        the target may already be sending (a server greeting) and its bytes wait in the relay."""
        key = _key(*local)
        relay = TcpRelay(self.mux, sid, on_done=lambda: self.pending.pop(key, None))
        relay.start()
        self.pending[key] = relay
        asyncio.get_running_loop().call_later(ATTACH_TIMEOUT, self._expire, key, relay)
        return relay

    def _expire(self, key: tuple[str, int], relay: TcpRelay) -> None:
        if self.pending.get(key) is relay:
            del self.pending[key]
            self.mux.streams.pop(relay.sid, None)
            self.mux.conn.send_close(relay.sid, "ECONNABORTED", "the app never used the connection")
            self.mux.flush()

    def close(self) -> None:
        for server in self.servers:
            server.close()


def _normal_ip(host: str) -> str:
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


class UdpRelay(asyncio.DatagramProtocol, StreamEndpoint):
    """The session's half of one tunneled UDP socket.

    Its loopback port is what the app's socket sends to (or is connected to), so it outlives a lost agent: the
    relay is detached (datagrams meanwhile are dropped, as a network may drop them) and attached to a new
    agent's socket after the reconnect. Only a close of this one stream by a healthy agent ends it."""

    def __init__(self, mux: Mux, sid: int, app: tuple[str, int], peer: tuple[str, int] | None, family: int) -> None:
        self.app = _key(*app)
        self.peer = (_normal_ip(peer[0]), peer[1]) if peer else None
        self.family = family
        self.answer: list = []  # [ip, port] the target's resolver answers instead of sending there (session.py)
        self.transport: asyncio.DatagramTransport | None = None
        self.attach(mux, sid)

    def attach(self, mux: Mux, sid: int) -> None:
        """Use stream ``sid`` of ``mux`` (a new agent's, after a reconnect)."""
        self.mux, self.sid = mux, sid
        self.attached = True
        mux.streams[sid] = self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if _key(addr[0], addr[1]) != self.app or not self.attached:
            return  # only the app's own socket may use this relay; while detached, datagrams are lost
        if self.peer is not None:
            self.mux.conn.send_datagram(self.sid, self.peer[0], self.peer[1], data)
            self.mux.flush()
        else:
            self.send_addressed(data)

    def send_addressed(self, data: bytes) -> None:
        """Sends a datagram that carries its far address in the prefix."""
        if not self.attached or self.transport is None or self.transport.is_closing():
            return
        try:
            host, port, off = p.decode_address(data)
        except (ValueError, UnicodeDecodeError):
            return
        self.mux.conn.send_datagram(self.sid, host, port, data[off:])
        self.mux.flush()

    def on_datagram(self, host: str, port: int, data: bytes) -> None:
        if self.transport is None:
            return
        if self.peer is not None:
            if (_normal_ip(host), port) != self.peer:
                return  # a connected socket only hears from its peer
            self.transport.sendto(data, self.app)
        else:
            self.transport.sendto(p.encode_address(host, port) + data, self.app)

    def on_channel_close(self, errno: str | None) -> None:
        if self.transport is not None:
            self.transport.close()

    def on_channel_lost(self, errno: str | None) -> None:
        self.attached = False  # the agent is gone, not this socket: wait for the next one

    def error_received(self, exc: Exception) -> None:
        pass

    def close(self) -> None:
        self.attached = False
        if self.mux.streams.pop(self.sid, None) is not None:
            self.mux.conn.send_close(self.sid, None, "closed")
            self.mux.flush()
        if self.transport is not None:
            self.transport.close()


class UdpDoor(asyncio.DatagramProtocol):
    """Where a connected app socket sends the datagrams it addresses elsewhere (each with its prefix): the
    relay is found by the datagram's source, the app socket's own address."""

    def __init__(self, relays: dict[tuple[str, int], UdpRelay]) -> None:
        self.relays = relays  # app address -> relay, kept by the session

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        relay = self.relays.get(_key(addr[0], addr[1]))
        if relay is not None:
            relay.send_addressed(data)

    def error_received(self, exc: Exception) -> None:
        pass


async def open_udp_doors(relays: dict[tuple[str, int], UdpRelay]) -> dict[int, asyncio.DatagramTransport]:
    """One door per loopback family (IPv6 only where the machine has it)."""
    loop = asyncio.get_running_loop()
    doors: dict[int, asyncio.DatagramTransport] = {}
    for host, family in LOOPBACKS:
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: UdpDoor(relays), local_addr=(host, 0),
                                                               family=family)
        except OSError:
            if family == socket.AF_INET:
                raise
            continue
        doors[family] = transport
    return doors


async def open_udp_relay(
    mux: Mux, sid: int, app: tuple[str, int], peer: tuple[str, int] | None, family: int
) -> UdpRelay:
    """A relay for an app socket bound to ``app``, on the loopback of that address's family."""
    loop = asyncio.get_running_loop()
    relay = UdpRelay(mux, sid, app, peer, family)
    local = family_of(app[0])
    await loop.create_datagram_endpoint(lambda: relay, local_addr=(LOOPBACKS[local == socket.AF_INET6][0], 0),
                                        family=local)
    return relay
