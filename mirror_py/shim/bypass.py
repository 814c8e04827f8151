"""Noticing connections and lookups that go around the patched surface, and saying so once.

gevent and eventlet build their sockets on the ``_socket`` C type (eventlet even on a private copy of the
``socket`` module), and their resolvers call ``_socket.getaddrinfo``; code may also hold a reference to
``socket.getaddrinfo`` taken before the shim was installed, or use ``_socket.socket`` itself. None of these
pass through the patched names, so their traffic leaves from this machine while the user believes it leaves
from the pod. The C socket module raises audit events for every connect and lookup whoever calls it, so an
audit hook sees them all: when the call did not come through the shim and the shim would have sent it to the
target, the user is told once per module which one bypassed mirror-py.

Audit hooks cannot be removed; uninstalling turns this one into a single comparison.
"""

from __future__ import annotations

import sys
from typing import Any

_on: list[bool] = []
_added: list[bool] = []
_warned: set[str] = set()
_EVENTS = ("socket.connect", "socket.getaddrinfo")
# Frames of these modules sit between a caller and the C call (the original socket.getaddrinfo in socket.py);
# the caller that matters is the first frame outside them.
_PASS_THROUGH = ("socket", "ssl", "selectors")
_WHY = {
    "gevent": "gevent's sockets and resolver are built on the C socket type, which mirror-py does not patch",
    "eventlet": "eventlet's green sockets use a private copy of the socket module, which mirror-py does not "
                "patch",
}


def install() -> None:
    _on[:] = [True]
    if not _added:
        _added.append(True)
        sys.addaudithook(_hook)


def uninstall() -> None:
    _on.clear()


def _caller(frame: Any) -> str:
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name not in _PASS_THROUGH:
            return name
        frame = frame.f_back
    return ""


def _hook(event: str, args: tuple) -> None:
    if not _on or event not in _EVENTS:
        return
    try:
        module = _caller(sys._getframe(1))
        if module.startswith("mirror_py.") or module.startswith("mirror_py_agent."):
            return
        what = _would_be_remote(event, args)
        if what is not None:
            _warn(module, what)
    except BaseException:  # an exception here would fail the app's own call
        return


def _would_be_remote(event: str, args: tuple) -> str | None:
    if event == "socket.connect":
        sock, address = args
        from . import net

        target = net.plan(sock, address)
        return None if target is None else f"connection to {target[0]}:{target[1]}"
    host, port = args[0], args[1]
    from . import dns

    if dns.remote_name(host, port) is None:
        return None
    return f"lookup of {host!r}"


def _warn(module: str, what: str) -> None:
    package = module.partition(".")[0] or "?"
    if package in _warned:
        return
    _warned.add(package)
    why = _WHY.get(package)
    if why is None:
        why = (f"module {module} calls the C socket module directly (a _socket.socket, or a socket function "
               "it saved before mirror-py was installed)")
    sys.stderr.write(
        f"mirror-py: warning: a {what} by {package} went out from this machine, not from the target: {why}\n"
    )
