"""Outgoing TCP and UDP through the target, with the app's sockets kept real.

A remote TCP connect becomes: bind the app's socket to loopback, ask the session to connect in the target
(one RPC), then connect the app's socket to the session's relay endpoint. Every later byte moves through the
kernel, so TLS, ``select``, asyncio and ``makefile`` work as they would on a direct connection;
``getpeername``/``getsockname`` report what the socket would show inside the pod.

The registry is keyed by the kernel socket (its inode), not by file descriptor or Python object: one socket can
have many of both — ``dup()``, ``socket.fromfd()``, ``socket.socket(fileno=...)``, and ``ssl.wrap_socket``, which
moves the descriptor to a new object — and each must see the same remote view. An entry lives as long as a
descriptor of this process that mirror-py knows of holds the socket: the one it was registered with and every
socket object built later on a descriptor of it.

A relayed UDP socket has two ways to the session: its relay, which it is connected to when the app connected
it (datagrams pass unchanged, to and from the connected peer), and a door that takes datagrams carrying their
far address in a small prefix — what ``sendto``/``sendmsg`` with an address use, connected or not, as Linux
lets a connected UDP socket send elsewhere. For an unconnected socket the door is the relay itself, and what
comes back carries the prefix too.
"""

from __future__ import annotations

import _socket
import errno as _errno
import os
import socket
from typing import Any, Callable

from mirror_py_agent.addresses import decode_address, encode_address

from . import dns, errors, local_listeners, nameservers, resolved, routes, rpc, scope, settings

_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_DGRAM = socket.SOCK_DGRAM
_RAW = _socket.socket
_fstat = os.fstat
_ADDR_ROOM = 1 + 255 + 2  # the largest address prefix on a relayed datagram
_WILDCARDS = ("0.0.0.0", "::", "::ffff:0.0.0.0")


class Remote:
    __slots__ = ("deferred", "door", "fds", "kind", "local", "peer", "prefixed", "relay", "sock", "state")

    def __init__(self, kind: str, peer: tuple | None, sock: tuple, relay: tuple | None, local: tuple,
                 prefixed: bool = False, door: tuple | None = None) -> None:
        self.kind = kind
        self.peer = peer
        self.sock = sock
        self.relay = relay
        self.local = local
        self.prefixed = prefixed  # datagrams from the relay carry their source address
        self.door = door  # where datagrams that carry their destination go (UDP)
        self.fds: set[int] = set()  # this process's descriptors known to hold the socket
        self.state: str | None = None  # "pending" while a non-blocking connect is in flight (nbconnect.py)
        self.deferred = False  # connected the non-blocking way: the session keeps its outcome until the close


registry: dict[int, Remote] = {}  # socket inode -> its remote view
# Set by the incoming module when this process inherited listeners: finds one by its socket on first use.
adopt: Callable[[Any], Remote | None] | None = None


def register(sock: Any, info: Remote) -> Remote:
    """Files ``info`` under ``sock``'s kernel socket, so every descriptor and object of that socket finds it."""
    fd = sock.fileno()
    info.fds.add(fd)
    registry[_fstat(fd).st_ino] = info
    return info


def _inode(fd: int) -> int | None:
    if fd < 0:
        return None
    try:
        return _fstat(fd).st_ino
    except OSError:
        return None


def _view(addr: tuple | None, family: int) -> tuple | None:
    """An address as a socket of ``family`` reports it (an IPv6 socket shows IPv4 peers v4-mapped)."""
    if addr is None:
        return None
    if family == _AF_INET6:
        host = addr[0]
        if ":" not in host:
            host = "::ffff:" + host
        return (host, addr[1], 0, 0)
    return (addr[0], addr[1])


def _literal_ip(host: str) -> bool:
    return dns.is_ip(host)


Target = tuple[str, int, "str | None"]  # (ip, port, hostname) in the target
NAMESERVER_RULE = "a DNS query to this machine's name server: the target's resolver answers it"
_NOTHING: tuple[None, None] = (None, None)


def plan(sock: Any, address: Any, proto: str | None = None) -> Target | None:
    """Where a connect/sendto should go: ``(ip, port, hostname)`` in the target, or None for local."""
    return planned(sock, address, proto)[0]


def planned(sock: Any, address: Any, proto: str | None = None) -> tuple[Target | None, routes.Decision | None]:
    """:func:`plan`, and the decision as routes.py records it: None where no routing rule was asked (a local
    block, outgoing turned off, not an IP socket). Only the callers that act on the plan record it."""
    if scope.is_local():
        return _NOTHING  # a local block: this connect/datagram is the machine's own (see scope.py)
    family = sock.family
    if family != _AF_INET and family != _AF_INET6:
        return _NOTHING
    if not isinstance(address, tuple) or len(address) < 2:
        return _NOTHING
    st = settings.get()
    kind = sock.type
    if proto is None:
        proto = "tcp" if kind == socket.SOCK_STREAM else "udp" if kind == socket.SOCK_DGRAM else None
    if proto is None:
        return _NOTHING
    # Outgoing UDP turned off still answers DNS queries to this machine's name servers from the target: they
    # are name lookups, which network.dns governs.
    dns_only = not st.outgoing_enabled or not (st.tcp if proto == "tcp" else st.udp)
    if dns_only and not (proto == "udp" and st.dns_enabled and address[1] == nameservers.DNS_PORT):
        return _NOTHING
    host, port = address[0], address[1]
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("idna")
    if not isinstance(host, str) or not isinstance(port, int):
        return _NOTHING
    if _literal_ip(host):
        ip, names = host, resolved.names_for(host)
    elif host == "":
        return _NOTHING
    else:
        infos = socket.getaddrinfo(host, port, family, kind)  # the patched lookup: remote when DNS is
        if not infos:
            return _NOTHING
        ip, names = infos[0][4][0], (host.lower().rstrip("."),)
    if dns_only and not nameservers.is_local_nameserver(ip, port):
        return _NOTHING
    remote, why = decide(st, proto, ip, port, names)
    # Shown with the name the app resolved to this address (create_connection resolves, then connects).
    name = names[0] if names else None
    decision = (proto, ip, port, name, remote, why)
    return ((ip, port, name) if remote else None), decision


def goes_remote(st: settings.Settings, proto: str, ip: str, port: int, names: tuple[str, ...]) -> bool:
    return decide(st, proto, ip, port, names)[0]


def decide(st: settings.Settings, proto: str, ip: str, port: int,
           names: tuple[str, ...]) -> tuple[bool, str]:
    """(remote?, the rule that said so, in words). The order of the outgoing decision: a rule of
    ``network.outgoing.filter`` that matches the address or a name it was resolved from decides; else a
    listener of the app's own on the laptop keeps a loopback connect local (``network.outgoing.local_listeners``);
    else the filter's default (remote, unless it lists remotes)."""
    flt = st.outgoing_filter
    rule = flt.rule_for(proto, ip, port, names)
    if rule is not None:
        listed = "remote" if flt.lists_remotes else "local"
        return flt.lists_remotes, f"network.outgoing.filter {listed} rule {rule.text!r}"
    if proto == "udp" and st.dns_enabled and nameservers.is_local_nameserver(ip, port):
        return True, NAMESERVER_RULE
    if not flt.default_remote:
        return False, "outgoing default: local, as network.outgoing.filter lists what is remote"
    if local_listeners.stays_local(proto, ip, port, st.local_listeners):
        if st.local_listeners == "laptop":
            return False, "a listener on this machine takes it (network.outgoing.local_listeners = laptop)"
        if not local_listeners.session_port(proto, port):
            return False, "a listener on this machine takes it, and nothing listens there in the target"
        return False, "this process listens there" if _own_listener(proto, port) else \
            "a process of this session listens there"
    return True, routes.DEFAULT_REMOTE


def _own_listener(proto: str, port: int) -> bool:
    """Is the listener that kept a connect local one of this very process's sockets?"""
    return local_listeners.own_port(proto, port)


def _loopback_for(sock: Any) -> str:
    if sock.family == _AF_INET6:
        try:
            v6only = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        except OSError:
            v6only = 0
        return "::1" if v6only else "::ffff:127.0.0.1"
    return "127.0.0.1"


def _ensure_bound(sock: Any) -> list:
    """The address the app's socket will reach the relay from, binding it to loopback if it is not bound."""
    local = _RAW.getsockname(sock)
    if local[1] == 0:
        _RAW.bind(sock, (_loopback_for(sock), 0))
        local = _RAW.getsockname(sock)
    ip = local[0]
    if ip in _WILDCARDS:
        ip = _loopback_for(sock)  # the source the kernel picks to reach the relay of the socket's family
    return [ip, local[1]]


def _relay_address(sock: Any, relay: list) -> tuple:
    if sock.family == _AF_INET6:
        return ("::ffff:" + relay[0] if "." in relay[0] else relay[0], relay[1], 0, 0)
    return (relay[0], relay[1])


def _checked(reply: dict) -> dict:
    if "err" in reply:
        raise errors.to_exception(reply["err"])
    return reply["ok"]


def _connect_remote(sock: Any, target: Target, orig: Callable, decision: routes.Decision,
                    defer: bool = True) -> Any:
    """A remote TCP connect. A non-blocking socket's returns at once (nbconnect.py); a blocking one waits for
    the target, never longer than the socket's timeout: the agent, the session and this wait all keep it.
    The blocking connect's request is its own route report (routes.report_with)."""
    from . import nbconnect

    if defer and nbconnect.usable(sock) and nbconnect.start(sock, target):
        routes.note(decision)
        raise BlockingIOError(_errno.EINPROGRESS, os.strerror(_errno.EINPROGRESS))
    ip, port, _ = target
    local = _ensure_bound(sock)
    timeout = sock.gettimeout() or None
    request = {"op": "connect", "family": int(sock.family), "host": ip, "port": port, "local": local,
               "timeout": timeout}
    routes.report_with(request, decision)
    res = _checked(rpc.call(request, timeout=timeout))
    relay = _relay_address(sock, res["relay"])
    register(sock, Remote("tcp", tuple(res["peer"]), tuple(res["sock"]), relay, tuple(local)))
    return orig(sock, relay)


def _release(info: Remote) -> None:
    try:
        rpc.call({"op": "release", "relay": list(info.relay[:2])})
    except OSError:
        pass


def _open_udp(sock: Any, peer: tuple[str, int] | None) -> Remote:
    old = _lookup(sock)  # connected anew: the session replaces the relay of this address
    local = _ensure_bound(sock)
    request = {"op": "udp", "family": int(sock.family), "local": local, "peer": list(peer) if peer else None}
    if settings.get().dns_enabled:
        request["answer"] = nameservers.answered()
    res = _checked(rpc.call(request))
    relay = _relay_address(sock, res["relay"])
    door = _relay_address(sock, res.get("door") or res["relay"])
    info = Remote("udp", peer, tuple(res["sock"]), relay, tuple(local), prefixed=peer is None, door=door)
    if old is not None:
        info.fds = old.fds
    return register(sock, info)


# ---------------------------------------------------------------------------------------- patched methods
def _in_flight(sock: Any) -> Remote | None:
    """The entry of a socket whose non-blocking connect is still settling, if ``sock`` is one."""
    if not registry or sock.type != socket.SOCK_STREAM:
        return None
    info = _lookup(sock)
    return info if info is not None and info.state is not None else None


def route_connect(sock: Any, address: Any, orig: Callable, local: Callable, defer: bool = True) -> Any:
    """The connect decision for both ways in: the patched method (``local`` is the original method) and the
    C-level layer (``local`` is libc's own connect on the caller's sockaddr, mirror_py.shim.cnet). ``orig``
    connects the app's socket to a relay; ``defer`` allows a non-blocking socket the deferred way."""
    info = _in_flight(sock)
    if info is not None:
        from . import nbconnect

        err = nbconnect.again(sock, info)
        if err:
            raise OSError(err, os.strerror(err))
        return None
    target, decision = planned(sock, address)
    if target is None:
        if decision is not None:
            routes.note(decision)
        return local(sock, address)
    if sock.type == socket.SOCK_DGRAM:
        routes.note(decision)
        info = _open_udp(sock, (target[0], target[1]))
        return orig(sock, info.relay)
    return _connect_remote(sock, target, orig, decision, defer)


def make_connect(orig: Callable) -> Callable:
    def connect(self, address):
        return route_connect(self, address, orig, orig)

    return connect


def make_connect_ex(orig: Callable) -> Callable:
    def connect_ex(self, address):
        info = _in_flight(self)
        if info is not None:
            from . import nbconnect

            return nbconnect.again(self, info)
        target, decision = planned(self, address)
        if target is None:
            if decision is not None:
                routes.note(decision)
            return orig(self, address)
        try:
            if self.type == socket.SOCK_DGRAM:
                routes.note(decision)
                info = _open_udp(self, (target[0], target[1]))
                return orig(self, info.relay)
            _connect_remote(self, target, _RAW.connect, decision)
        except (socket.gaierror, rpc.SessionUnavailable):
            raise
        except OSError as exc:
            if exc.errno:
                return exc.errno
            if isinstance(exc, socket.timeout):
                return _errno.EWOULDBLOCK  # what connect_ex returns when the socket's timeout expires
            raise
        return 0

    return connect_ex


def _lookup(sock: Any) -> Remote | None:
    if not registry and adopt is None:
        return None
    try:
        info = registry.get(_fstat(sock.fileno()).st_ino)  # one syscall: see benchmarks/registry.py
    except OSError:  # closed (fileno -1) or detached
        return None
    if info is None and adopt is not None:
        info = adopt(sock)
    return info


def make_init(orig: Callable) -> Callable:
    """A socket object made on an existing descriptor (``dup``, ``fromfd``, ``socket(fileno=...)``, an SSL
    socket taking over a descriptor) joins its socket's entry, which then lives until this one closes too."""

    def __init__(self, *args, **kwargs):
        orig(self, *args, **kwargs)
        if registry and (kwargs.get("fileno") if len(args) < 4 else args[3]) is not None:
            fd = self.fileno()
            info = registry.get(_inode(fd))
            if info is not None:
                info.fds.add(fd)

    return __init__


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
            if real[1] != info.local[1]:
                return real
            if info.sock is None and info.deferred:
                from . import nbconnect

                nbconnect.outcome(info)  # the target's side of a non-blocking connect, once it is known
            return real if info.sock is None else _view(info.sock, self.family)
        return orig(self)

    return getsockname


def _split_sendto(args: tuple) -> tuple[int, Any]:
    if len(args) == 1:
        return 0, args[0]
    if len(args) == 2:
        return args[0], args[1]
    raise TypeError(f"sendto() takes 2 or 3 arguments ({len(args) + 1} given)")


def _door_for(sock: Any, address: Any) -> tuple[bytes, tuple] | None:
    """For a datagram to ``address``: the prefix naming its far end and the door to send it to, or None when
    it goes out locally. The same rule for ``sendto`` and ``sendmsg``, connected socket or not."""
    if sock.type != _DGRAM:
        return None
    info = _lookup(sock)
    if info is not None and info.kind != "udp":
        return None
    target, decision = planned(sock, address, "udp")
    if decision is not None:
        routes.note(decision)
    if target is None:
        return None
    if info is None:
        info = _open_udp(sock, None)
    return encode_address(target[0], target[1]), info.door


def make_sendto(orig: Callable) -> Callable:
    def sendto(self, data, *args):
        flags, address = _split_sendto(args)
        via = _door_for(self, address)
        if via is None:
            return orig(self, data, *args)
        payload = memoryview(data).tobytes()
        orig(self, via[0] + payload, flags, via[1])
        return len(payload)

    return sendto


def make_sendmsg(orig: Callable) -> Callable:
    def sendmsg(self, buffers, *args):
        address = args[2] if len(args) > 2 else None
        via = None if address is None else _door_for(self, address)
        if via is None:
            return orig(self, buffers, *args)
        parts = [via[0], *buffers]
        return orig(self, parts, args[0], args[1], via[1]) - len(via[0])

    return sendmsg


def _source(info: Remote, family: int, data: bytes, addr: Any) -> tuple[bytes, Any] | None:
    """The payload and the far source of a datagram from the relay (None when it came from elsewhere)."""
    if addr is None or tuple(addr[:2]) != tuple(info.relay[:2]):
        return None
    if not info.prefixed:
        return data, _view(info.peer, family)
    try:
        host, port, off = decode_address(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return data[off:], _view((host, port), family)


def _udp(sock: Any) -> Remote | None:
    info = _lookup(sock)
    return info if info is not None and info.kind == "udp" else None


def make_recvfrom(orig: Callable) -> Callable:
    def recvfrom(self, bufsize, flags=0):
        info = _udp(self)
        if info is None:
            return orig(self, bufsize, flags)
        room = _ADDR_ROOM if info.prefixed else 0
        data, addr = orig(self, bufsize + room, flags)
        got = _source(info, self.family, data, addr)
        if got is None:
            return data[:bufsize], addr
        return got[0][:bufsize], got[1]

    return recvfrom


def make_recvfrom_into(orig: Callable) -> Callable:
    def recvfrom_into(self, buffer, nbytes=0, flags=0):
        info = _udp(self)
        if info is None:
            return orig(self, buffer, nbytes, flags)
        if not info.prefixed:
            n, addr = orig(self, buffer, nbytes, flags)
            got = _source(info, self.family, b"", addr)
            return n, (addr if got is None else got[1])
        view = memoryview(buffer).cast("B")
        size = nbytes or len(view)
        data, addr = _RAW.recvfrom(self, size + _ADDR_ROOM, flags)
        got = _source(info, self.family, data, addr)
        payload, source = (data, addr) if got is None else got
        payload = payload[:size]
        view[: len(payload)] = payload
        return len(payload), source

    return recvfrom_into


def make_recvmsg(orig: Callable) -> Callable:
    def recvmsg(self, bufsize, ancbufsize=0, flags=0):
        info = _udp(self)
        if info is None:
            return orig(self, bufsize, ancbufsize, flags)
        room = _ADDR_ROOM if info.prefixed else 0
        data, anc, msg_flags, addr = orig(self, bufsize + room, ancbufsize, flags)
        got = _source(info, self.family, data, addr)
        if got is None:
            return data[:bufsize], anc, msg_flags, addr
        return got[0][:bufsize], anc, msg_flags, got[1]

    return recvmsg


def make_real_close(orig: Callable) -> Callable:
    def _real_close(self, *args, **kwargs):
        if not registry:
            return orig(self, *args, **kwargs)
        fd = self.fileno()
        ino = _inode(fd)
        info = registry.get(ino) if ino is not None else None
        if info is None:
            return orig(self, *args, **kwargs)
        info.fds.discard(fd)
        if info.fds:
            return orig(self, *args, **kwargs)  # another descriptor of this process still holds the socket
        del registry[ino]
        result = orig(self, *args, **kwargs)
        # After the close, the session looks whether another process (a forked child) still holds the socket.
        if info.kind == "udp":
            _release(info)
        elif info.deferred:
            from . import nbconnect

            nbconnect.forget(info)
        elif info.kind == "listen":
            from . import incoming

            incoming.closed(ino)
        return result

    return _real_close


def forget_all() -> None:
    registry.clear()
