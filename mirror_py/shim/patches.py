"""The interposed surface, declared as data, with symmetric install and uninstall.

Each row names where a function lives and the factory that wraps the original. Installing records exactly
what was there — including whether the attribute was the owner's own or inherited — so uninstalling puts back
the very same objects (tested by identity).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, NamedTuple

from . import dns, net


class Patch(NamedTuple):
    module: str
    owner: str | None  # a class in the module, or None for a module-level function
    name: str
    factory: Callable[[Any], Any]


SOCKET_SURFACE: tuple[Patch, ...] = (
    # socket.socket inherits these from the C type, which cannot be changed: they are set on the Python class.
    Patch("socket", "socket", "connect", net.make_connect),
    Patch("socket", "socket", "connect_ex", net.make_connect_ex),
    Patch("socket", "socket", "getpeername", net.make_getpeername),
    Patch("socket", "socket", "getsockname", net.make_getsockname),
    Patch("socket", "socket", "sendto", net.make_sendto),
    Patch("socket", "socket", "recvfrom", net.make_recvfrom),
    Patch("socket", "socket", "recvfrom_into", net.make_recvfrom_into),
    Patch("socket", "socket", "recvmsg", net.make_recvmsg),
    Patch("socket", "socket", "_real_close", net.make_real_close),
    Patch("socket", None, "getaddrinfo", dns.make_getaddrinfo),
    Patch("socket", None, "gethostbyname", dns.make_gethostbyname),
    Patch("socket", None, "gethostbyname_ex", dns.make_gethostbyname_ex),
    Patch("socket", None, "gethostbyaddr", dns.make_gethostbyaddr),
    Patch("socket", None, "getnameinfo", dns.make_getnameinfo),
    Patch("socket", None, "gethostname", dns.make_gethostname),
)

_MISSING = object()


class _Saved(NamedTuple):
    obj: Any
    name: str
    own: Any  # the owner's own attribute before patching, or _MISSING when it was inherited
    replacement: Any


_installed: list[_Saved] = []


def _owner(patch: Patch) -> Any:
    module = sys.modules[patch.module]
    return getattr(module, patch.owner) if patch.owner else module


def install(surface: tuple[Patch, ...] = SOCKET_SURFACE) -> None:
    if _installed:
        return
    for patch in surface:
        obj = _owner(patch)
        own = vars(obj).get(patch.name, _MISSING)
        replacement = patch.factory(getattr(obj, patch.name))
        setattr(obj, patch.name, replacement)
        _installed.append(_Saved(obj, patch.name, own, replacement))


def uninstall() -> None:
    while _installed:
        obj, name, own, _ = _installed.pop()
        if own is _MISSING:
            delattr(obj, name)
        else:
            setattr(obj, name, own)


def is_installed() -> bool:
    return bool(_installed)
