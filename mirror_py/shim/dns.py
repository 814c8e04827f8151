"""Name lookups answered by the target's resolver.

Numeric hosts, ``localhost`` and this machine's own hostname stay local: resolving them remotely would break
code that asks for its own address, and they mean the same thing everywhere.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from . import errors, host, resolved, rpc, scope, settings

_LOCAL_NAMES = frozenset(("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"))
_local_hostname: list[str] = []


def _answered(host: Any, addresses: Any, *names: Any) -> None:
    """Remember, for the outgoing filter, that each address was an answer for ``host`` (and ``names``)."""
    if isinstance(host, (bytes, bytearray)):
        try:
            host = bytes(host).decode("idna")
        except UnicodeError:
            return
    if not isinstance(host, str) or not host:
        return
    for address in addresses:
        if address != host:
            resolved.remember(address, (host, *names))


def is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, host)
        return True
    except OSError:
        pass
    try:
        socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
        return True
    except OSError:
        return False


def _own_hostname() -> str:
    if not _local_hostname:
        import _socket

        _local_hostname.append(_socket.gethostname().lower())
    return _local_hostname[0]


def remote_name(host: Any, port: Any = None, flags: int = 0) -> str | None:
    """The name to resolve remotely, or None when this lookup stays local."""
    if scope.is_local():
        return None
    st = settings.get()
    if not st.dns_enabled or host is None:
        return None
    if isinstance(host, (bytes, bytearray)):
        try:
            host = bytes(host).decode("idna")
        except UnicodeError:
            return None
    if not isinstance(host, str) or not host or flags & socket.AI_NUMERICHOST or is_ip(host):
        return None
    low = host.lower().rstrip(".")
    if low in _LOCAL_NAMES or low.endswith(".localhost") or low == _own_hostname():
        return None
    if not st.dns_filter.is_remote(low, port if isinstance(port, int) else None):
        return None
    return host


def _call(fn: str, **args: Any) -> Any:
    reply = rpc.call({"op": "dns", "fn": fn, **args})
    if "err" in reply:
        raise errors.to_exception(reply["err"])
    return reply["ok"]


def _enum(cls: Any, value: int) -> Any:
    try:
        return cls(value)
    except ValueError:
        return value


def make_getaddrinfo(orig: Callable) -> Callable:
    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        name = remote_name(host, port, flags)
        if name is None:
            infos = orig(host, port, family, type, proto, flags)
            _answered(host, [info[4][0] for info in infos])
            return infos
        if isinstance(port, (bytes, bytearray)):
            port = bytes(port).decode()
        if port is not None and not isinstance(port, (int, str)):
            raise TypeError("getaddrinfo() argument 2 must be integer or string")
        return remote_getaddrinfo(name, port, family, type, proto, flags)

    return getaddrinfo


def remote_getaddrinfo(name: str, port: int | str | None, family: int = 0, type: int = 0, proto: int = 0,
                       flags: int = 0) -> list[tuple]:
    """``getaddrinfo`` in the target, for a name :func:`remote_name` sent there: the patched function's and the
    C-level layer's (mirror_py.shim.cdns) one way to the session and its cache."""
    result = _call(
        "getaddrinfo", host=name, port=port, family=int(family), type=int(type),
        proto=int(proto), flags=int(flags),
    )
    out = []
    for fam, kind, pr, canon, sockaddr in result:
        out.append((_enum(socket.AddressFamily, fam), _enum(socket.SocketKind, kind), pr, canon,
                    tuple(sockaddr)))
    _answered(name, [info[4][0] for info in out])
    return out


def remote_gethostbyname_ex(name: str) -> tuple[str, list[str], list[str]]:
    """``gethostbyname_ex`` in the target, for a name :func:`remote_name` sent there (both ways in)."""
    canon, aliases, addrs = _call("gethostbyname_ex", host=name)
    _answered(name, addrs, canon, *aliases)
    return canon, list(aliases), list(addrs)


def make_gethostbyname(orig: Callable) -> Callable:
    def gethostbyname(hostname):
        name = remote_name(hostname)
        ip = orig(hostname) if name is None else _call("gethostbyname", host=name)
        _answered(hostname, (ip,))
        return ip

    return gethostbyname


def make_gethostbyname_ex(orig: Callable) -> Callable:
    def gethostbyname_ex(hostname):
        name = remote_name(hostname)
        if name is None:
            canon, aliases, addrs = orig(hostname)
        else:
            canon, aliases, addrs = _call("gethostbyname_ex", host=name)
        _answered(hostname, addrs, canon, *aliases)
        return canon, list(aliases), list(addrs)

    return gethostbyname_ex


def make_gethostbyaddr(orig: Callable) -> Callable:
    def gethostbyaddr(ip_address):
        host = ip_address.decode() if isinstance(ip_address, (bytes, bytearray)) else ip_address
        if scope.is_local() or not settings.get().dns_enabled or not isinstance(host, str):
            return orig(ip_address)
        if not is_ip(host) and remote_name(host) is None:
            return orig(ip_address)
        canon, aliases, addrs = _call("gethostbyaddr", host=host)
        return canon, list(aliases), list(addrs)

    return gethostbyaddr


def make_getnameinfo(orig: Callable) -> Callable:
    numeric = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV

    def getnameinfo(sockaddr, flags):
        if (scope.is_local() or not settings.get().dns_enabled or flags & numeric == numeric
                or not isinstance(sockaddr, tuple)):
            return orig(sockaddr, flags)
        host, port = _call("getnameinfo", sockaddr=list(sockaddr), flags=int(flags))
        return host, port

    return getnameinfo


def make_gethostname(orig: Callable) -> Callable:
    def gethostname():
        name = host.pod_hostname()  # None in a local block: see host.py
        return orig() if name is None else name

    return gethostname


def _in_context(loop: Any, fn: Callable, *args: Any) -> Any:
    """``fn`` in the loop's thread pool, in a copy of the calling task's context: the pool's threads would
    otherwise not see the task's local block."""
    import contextvars
    import functools

    return loop.run_in_executor(None, functools.partial(contextvars.copy_context().run, fn, *args))


def make_loop_getaddrinfo(orig: Callable) -> Callable:
    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):
        if not scope.is_local():
            return await orig(self, host, port, family=family, type=type, proto=proto, flags=flags)
        return await _in_context(self, socket.getaddrinfo, host, port, family, type, proto, flags)

    return getaddrinfo


def make_loop_getnameinfo(orig: Callable) -> Callable:
    async def getnameinfo(self, sockaddr, flags=0):
        if not scope.is_local():
            return await orig(self, sockaddr, flags)
        return await _in_context(self, socket.getnameinfo, sockaddr, flags)

    return getnameinfo
