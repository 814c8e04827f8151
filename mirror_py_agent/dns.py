"""Name service operations, answered the way a process in the target would see them.

Two ways, chosen by the placement:

- libc (exec and ephemeral placements, and before any placement): the agent shares the target's resolver
  files, because it runs in the target container (exec) or in a container of the same pod, whose
  ``resolv.conf`` and ``hosts`` the kubelet writes alike (ephemeral); glibc reads them on every lookup.
- the stub resolver of :mod:`resolver` (rooted placements: the job pod and ``pid/`` targets): the agent runs
  in the target's network and UTS namespaces only, with more privilege than the target, and reads the target's
  resolver files through ``/proc/<pid>/root``. glibc cannot be used there: it would read the agent's own files,
  and entering the target's mount namespace instead would have it load NSS modules from the target's ``/lib``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any, Callable, Optional

from . import resolver

_reader: list[Callable[[str], Optional[bytes]]] = []
_stat: list[Callable[[str], os.stat_result]] = [os.stat]


def use_root(read: Callable[[str], Optional[bytes]], stat: Callable[[str], os.stat_result]) -> None:
    """From now on, resolve with the stub resolver over files read by ``read`` (a path in the target), and
    watch them with ``stat``."""
    _reader[:] = [read]
    _stat[:] = [stat]

#: What the C library reads to answer a lookup: a change to any of them may change the answers, so the
#: session's cache is emptied when one changes (see :func:`watch`).
RESOLVER_FILES = ("/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf", "/etc/host.conf", "/etc/gai.conf")
WATCH_INTERVAL = 0.5  # seconds between two looks at RESOLVER_FILES while a session watches them
WATCH_LIMIT = 300.0  # a watch answers "unchanged" after this long, so no request stays open for ever


def _read_local(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def reader() -> Callable[[str], Optional[bytes]]:
    """How the target's resolver files are read: through its root (rooted placements) or where the agent
    runs, which shares them (exec and ephemeral placements, see above)."""
    return _reader[0] if _reader else _read_local


def _hostname() -> str:
    # A pod's hostname is its /etc/hostname; a namespace entered without its own UTS namespace would otherwise
    # report the node's name.
    if _reader:
        return resolver.hostname(_reader[0])
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
    family, kind, proto, flags = (int(args.get(k, 0)) for k in ("family", "type", "proto", "flags"))
    if _reader:
        return resolver.getaddrinfo(_reader[0], host, port, family, kind, proto, flags)
    infos = socket.getaddrinfo(host, port, family, kind, proto, flags)
    return [[int(f), int(t), int(pr), canon, list(sa)] for f, t, pr, canon, sa in infos]


def _gethostbyname(args: dict) -> str:
    if _reader:
        return resolver.gethostbyname(_reader[0], str(args["host"]))
    return socket.gethostbyname(str(args["host"]))


def _gethostbyname_ex(args: dict) -> list:
    if _reader:
        return resolver.gethostbyname_ex(_reader[0], str(args["host"]))
    name, aliases, addrs = socket.gethostbyname_ex(str(args["host"]))
    return [name, aliases, addrs]


def _gethostbyaddr(args: dict) -> list:
    if _reader:
        return resolver.gethostbyaddr(_reader[0], str(args["host"]))
    name, aliases, addrs = socket.gethostbyaddr(str(args["host"]))
    return [name, aliases, addrs]


def _getnameinfo(args: dict) -> list:
    sa = args["sockaddr"]
    if not isinstance(sa, list) or not 2 <= len(sa) <= 4:
        raise TypeError("sockaddr must be a list of 2 to 4 items")
    flags = int(args.get("flags", 0))
    if _reader:
        return resolver.getnameinfo(_reader[0], sa, flags)
    host, port = socket.getnameinfo(tuple(sa), flags)
    return [host, port]


_FUNCTIONS = {
    "getaddrinfo": _getaddrinfo,
    "gethostbyname": _gethostbyname,
    "gethostbyname_ex": _gethostbyname_ex,
    "gethostbyaddr": _gethostbyaddr,
    "getnameinfo": _getnameinfo,
    "gethostname": lambda a: _hostname(),
}


async def resolve(args: dict) -> Any:
    """Runs one lookup in a worker thread: libc resolvers and the stub resolver's queries block."""
    fn = _FUNCTIONS.get(args.get("fn"))  # type: ignore[arg-type]
    if fn is None:
        raise ValueError(f"unknown name service function {args.get('fn')!r}")
    return await asyncio.get_running_loop().run_in_executor(None, fn, args)


def resolver_stamp() -> list:
    """Identity and version of each resolver file: inode, mtime, ctime and size (None for a missing file).

    Kubernetes writes a pod's /etc/hosts in place (it is a bind mount, so it cannot be replaced by a rename),
    and an editor or a config reloader replaces it with a new inode: either way one of these fields changes.
    The stat follows symbolic links, as the C library's open() does."""
    out: list = []
    for path in RESOLVER_FILES:
        try:
            st = _stat[0](path)
        except (OSError, ValueError):
            out.append(None)
            continue
        out.append([st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size])
    return out


async def watch(args: dict) -> dict:
    """Answers once a resolver file differs from ``since`` (a stamp from an earlier answer; default: now).

    A long poll rather than a message of its own: the session keeps one watch open while it caches answers
    and empties its cache when the watch answers, so a change to the target's /etc/hosts is seen within
    about WATCH_INTERVAL plus half a round trip, and a cached lookup still costs no round trip at all. The
    baseline is taken before the first await, so a lookup requested after the watch reads files that are
    no older than the baseline."""
    since = args.get("since")
    baseline = since if isinstance(since, list) else resolver_stamp()
    interval = min(max(float(args.get("interval", WATCH_INTERVAL)), 0.05), 10.0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(max(float(args.get("limit", WATCH_LIMIT)), interval), WATCH_LIMIT)
    while True:
        await asyncio.sleep(interval)
        current = resolver_stamp()
        if current != baseline:
            return {"changed": True, "stamp": current}
        if loop.time() >= deadline:
            return {"changed": False, "stamp": current}
