"""Outgoing TCP and UDP through the target, with the app's sockets kept real.

A remote TCP connect becomes: bind the app's socket to loopback, ask the session to connect in the target
(one RPC), then connect the app's socket to the session's relay endpoint. Every later byte moves through the
kernel, so TLS, ``select``, asyncio and ``makefile`` work as they would on a direct connection;
``getpeername``/``getsockname`` report what the socket would show inside the pod.

The registry is keyed by file descriptor, not by socket object: ``ssl.wrap_socket`` moves the descriptor to a
new object and detaches the old one.
"""

from __future__ import annotations

import _socket
import socket
from typing import Any, Callable

from mirror_py_agent.addresses import decode_address, encode_address

from . import dns, errors, local_listeners, resolved, rpc, settings

_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_RAW = _socket.socket
_ADDR_ROOM = 1 + 255 + 2  # the largest address prefix on a relayed datagram


class Remote:
    __slots__ = ("kind", "local", "peer", "prefixed", "relay", "sock")

    def __init__(self, kind: str, peer: tuple | None, sock: tuple, relay: tuple, local: tuple,
                 prefixed: bool = False) -> None:
        self.kind = kind
        self.peer = peer
        self.sock = sock
        self.relay = relay
        self.local = local
        self.prefixed = prefixed


registry: dict[int, Remote] = {}
# Set by the incoming module when this process inherited listeners: finds one by its socket on first use.
adopt: Callable[[Any], Remote | None] | None = None


def _view(addr: tuple | None, family: int) -> tuple | None:
    if addr is None:
        return None
    if family == _AF_INET6:
        return (addr[0], addr[1], 0, 0)
    return (addr[0], addr[1])


def _literal_ip(host: str) -> bool:
    return dns.is_ip(host)


def plan(sock: Any, address: Any, proto: str | None = None) -> tuple[str, int, str | None] | None:
    """Where a connect/sendto should go: ``(ip, port, hostname)`` in the target, or None for local."""
    family = sock.family
    if family != _AF_INET and family != _AF_INET6:
        return None
    if not isinstance(address, tuple) or len(address) < 2:
        return None
    st = settings.get()
    if not st.outgoing_enabled:
        return None
    kind = sock.type
    if proto is None:
        proto = "tcp" if kind == socket.SOCK_STREAM else "udp" if kind == socket.SOCK_DGRAM else None
    if proto is None or not (st.tcp if proto == "tcp" else st.udp):
        return None
    host, port = address[0], address[1]
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("idna")
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    if _literal_ip(host):
        ip, names = host, resolved.names_for(host)
    elif host == "":
        return None
    else:
        infos = socket.getaddrinfo(host, port, family, kind)  # the patched lookup: remote when DNS is
        if not infos:
            return None
        ip, names = infos[0][4][0], (host.lower().rstrip("."),)
    if not goes_remote(st, proto, ip, port, names):
        return None
    return ip, port, names[0] if names else None


def goes_remote(st: settings.Settings, proto: str, ip: str, port: int, names: tuple[str, ...]) -> bool:
    """The order of the outgoing decision: a rule of ``network.outgoing.filter`` that matches the address or a
    name it was resolved from decides; else a listener of the app's own on the laptop keeps a loopback connect
    local (``network.outgoing.local_listeners``); else the filter's default (remote, unless it lists remotes)."""
    said = st.outgoing_filter.rule_says(proto, ip, port, names)
    if said is not None:
        return said
    if not st.outgoing_filter.default_remote:
        return False
    return not local_listeners.stays_local(proto, ip, port, st.local_listeners)


def _loopback_for(sock: Any) -> str:
    if sock.family == _AF_INET6:
        try:
            v6only = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        except OSError:
            v6only = 0
        return "::1" if v6only else "::ffff:127.0.0.1"
    return "127.0.0.1"


def _ensure_bound(sock: Any) -> list:
    local = _RAW.getsockname(sock)
    if local[1] == 0:
        _RAW.bind(sock, (_loopback_for(sock), 0))
        local = _RAW.getsockname(sock)
    ip = local[0]
    if ip in ("0.0.0.0", "::", "::ffff:0.0.0.0"):
        ip = "127.0.0.1"
    return [ip, local[1]]


def _relay_address(sock: Any, relay: list) -> tuple:
    if sock.family == _AF_INET6:
        return ("::ffff:" + relay[0] if "." in relay[0] else relay[0], relay[1], 0, 0)
    return (relay[0], relay[1])


def _checked(reply: dict) -> dict:
    if "err" in reply:
        raise errors.to_exception(reply["err"])
    return reply["ok"]


def _connect_remote(sock: Any, target: tuple[str, int, str | None], orig: Callable) -> Any:
    ip, port, _ = target
    local = _ensure_bound(sock)
    timeout = sock.gettimeout()
    res = _checked(rpc.call({
        "op": "connect", "family": int(sock.family), "host": ip, "port": port, "local": local,
        "timeout": timeout or None,
    }))
    relay = _relay_address(sock, res["relay"])
    registry[sock.fileno()] = Remote("tcp", tuple(res["peer"]), tuple(res["sock"]), relay, tuple(local))
    return orig(sock, relay)


def _open_udp(sock: Any, peer: tuple[str, int] | None) -> Remote:
    local = _ensure_bound(sock)
    res = _checked(rpc.call({
        "op": "udp", "family": int(sock.family), "local": local, "peer": list(peer) if peer else None,
    }))
    relay = _relay_address(sock, res["relay"])
    info = Remote("udp", peer, tuple(res["sock"]), relay, tuple(local), prefixed=peer is None)
    registry[sock.fileno()] = info
    return info


# ---------------------------------------------------------------------------------------- patched methods
def make_connect(orig: Callable) -> Callable:
    def connect(self, address):
        target = plan(self, address)
        if target is None:
            return orig(self, address)
        if self.type == socket.SOCK_DGRAM:
            info = _open_udp(self, (target[0], target[1]))
            return orig(self, info.relay)
        return _connect_remote(self, target, orig)

    return connect


def make_connect_ex(orig: Callable) -> Callable:
    def connect_ex(self, address):
        target = plan(self, address)
        if target is None:
            return orig(self, address)
        try:
            if self.type == socket.SOCK_DGRAM:
                info = _open_udp(self, (target[0], target[1]))
                return orig(self, info.relay)
            _connect_remote(self, target, _RAW.connect)
        except (socket.gaierror, rpc.SessionUnavailable):
            raise
        except OSError as exc:
            if exc.errno:
                return exc.errno
            raise
        return 0

    return connect_ex


def _lookup(sock: Any) -> Remote | None:
    if not registry and adopt is None:
        return None
    info = registry.get(sock.fileno())
    if info is None and adopt is not None:
        info = adopt(sock)
    return info


def make_getpeername(orig: Callable) -> Callable:
    def getpeername(self):
        info = _lookup(self)
        if info is not None and info.peer is not None:
            real = orig(self)
            if real[:2] == info.relay[:2]:
                return _view(info.peer, self.family)
        return orig(self)

    return getpeername


def make_getsockname(orig: Callable) -> Callable:
    def getsockname(self):
        info = _lookup(self)
        if info is not None:
            real = orig(self)
            if real[1] == info.local[1]:
                return _view(info.sock, self.family)
            return real
        return orig(self)

    return getsockname


def _split_sendto(args: tuple) -> tuple[int, Any]:
    if len(args) == 1:
        return 0, args[0]
    if len(args) == 2:
        return args[0], args[1]
    raise TypeError(f"sendto() takes 2 or 3 arguments ({len(args) + 1} given)")


def make_sendto(orig: Callable) -> Callable:
    def sendto(self, data, *args):
        flags, address = _split_sendto(args)
        info = _lookup(self)
        if info is None:
            target = plan(self, address, "udp") if self.type == socket.SOCK_DGRAM else None
            if target is None:
                return orig(self, data, *args)
            info = _open_udp(self, None)
        elif not info.prefixed:
            return orig(self, data, *args)
        else:
            target = plan(self, address, "udp")
            if target is None:
                return orig(self, data, *args)
        payload = memoryview(data).tobytes()
        orig(self, encode_address(target[0], target[1]) + payload, flags, info.relay)
        return len(payload)

    return sendto


def _unwrap(info: Remote, family: int, data: bytes, addr: Any) -> tuple[bytes, Any] | None:
    if addr is None or tuple(addr[:2]) != tuple(info.relay[:2]):
        return None
    try:
        host, port, off = decode_address(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return data[off:], _view((host, port), family)


def make_recvfrom(orig: Callable) -> Callable:
    def recvfrom(self, bufsize, flags=0):
        info = _lookup(self)
        if info is None or not info.prefixed:
            return orig(self, bufsize, flags)
        data, addr = orig(self, bufsize + _ADDR_ROOM, flags)
        got = _unwrap(info, self.family, data, addr)
        if got is None:
            return data[:bufsize], addr
        return got[0][:bufsize], got[1]

    return recvfrom


def make_recvfrom_into(orig: Callable) -> Callable:
    def recvfrom_into(self, buffer, nbytes=0, flags=0):
        info = _lookup(self)
        if info is None or not info.prefixed:
            return orig(self, buffer, nbytes, flags)
        view = memoryview(buffer).cast("B")
        size = nbytes or len(view)
        data, addr = _RAW.recvfrom(self, size + _ADDR_ROOM, flags)
        got = _unwrap(info, self.family, data, addr)
        payload, source = (data, addr) if got is None else got
        payload = payload[:size]
        view[: len(payload)] = payload
        return len(payload), source

    return recvfrom_into


def make_recvmsg(orig: Callable) -> Callable:
    def recvmsg(self, bufsize, ancbufsize=0, flags=0):
        info = _lookup(self)
        if info is None or not info.prefixed:
            return orig(self, bufsize, ancbufsize, flags)
        data, anc, msg_flags, addr = orig(self, bufsize + _ADDR_ROOM, ancbufsize, flags)
        got = _unwrap(info, self.family, data, addr)
        if got is None:
            return data[:bufsize], anc, msg_flags, addr
        return got[0][:bufsize], anc, msg_flags, got[1]

    return recvmsg


def make_real_close(orig: Callable) -> Callable:
    def _real_close(self, *args, **kwargs):
        if registry:
            fd = self.fileno()
            info = registry.pop(fd, None) if fd >= 0 else None
            if info is not None and info.kind == "udp":
                try:
                    rpc.call({"op": "release", "relay": list(info.relay[:2])})
                except OSError:
                    pass
            elif info is not None and info.kind == "listen":
                result = orig(self, *args, **kwargs)
                from . import incoming

                incoming.closed(fd)  # after the close: the session looks whether another process holds it
                return result
        return orig(self, *args, **kwargs)

    return _real_close


def forget_all() -> None:
    registry.clear()
