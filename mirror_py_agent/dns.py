"""Name service operations, answered by the target's own resolver.

The agent runs inside the target's network and mount namespaces, so libc reads the target's resolv.conf and
hosts file on every lookup: the app sees exactly what a process in the pod would.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any


def _hostname() -> str:
    # A pod's hostname is its /etc/hostname; a namespace entered without its own UTS namespace would otherwise
    # report the node's name.
    try:
        with open("/etc/hostname", encoding="utf-8") as f:
            name = f.read().strip()
        if name:
            return name
    except OSError:
        pass
    return socket.gethostname()


def _getaddrinfo(args: dict) -> list:
    host = args.get("host")
    port = args.get("port")
    if host is not None and not isinstance(host, str):
        raise TypeError("host must be a string or null")
    if port is not None and not isinstance(port, (str, int)):
        raise TypeError("port must be a string, an integer or null")
    infos = socket.getaddrinfo(
        host,
        port,
        int(args.get("family", 0)),
        int(args.get("type", 0)),
        int(args.get("proto", 0)),
        int(args.get("flags", 0)),
    )
    return [[int(f), int(t), int(pr), canon, list(sa)] for f, t, pr, canon, sa in infos]


def _gethostbyname_ex(args: dict) -> list:
    name, aliases, addrs = socket.gethostbyname_ex(str(args["host"]))
    return [name, aliases, addrs]


def _gethostbyaddr(args: dict) -> list:
    name, aliases, addrs = socket.gethostbyaddr(str(args["host"]))
    return [name, aliases, addrs]


def _getnameinfo(args: dict) -> list:
    sa = args["sockaddr"]
    if not isinstance(sa, list) or not 2 <= len(sa) <= 4:
        raise TypeError("sockaddr must be a list of 2 to 4 items")
    host, port = socket.getnameinfo(tuple(sa), int(args.get("flags", 0)))
    return [host, port]


_FUNCTIONS = {
    "getaddrinfo": _getaddrinfo,
    "gethostbyname": lambda a: socket.gethostbyname(str(a["host"])),
    "gethostbyname_ex": _gethostbyname_ex,
    "gethostbyaddr": _gethostbyaddr,
    "getnameinfo": _getnameinfo,
    "gethostname": lambda a: _hostname(),
}


async def resolve(args: dict) -> Any:
    """Runs one lookup in a worker thread: libc resolvers block."""
    fn = _FUNCTIONS.get(args.get("fn"))  # type: ignore[arg-type]
    if fn is None:
        raise ValueError(f"unknown name service function {args.get('fn')!r}")
    return await asyncio.get_running_loop().run_in_executor(None, fn, args)
