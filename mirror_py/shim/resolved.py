"""Which names each address came from, in this process, on both sides of the DNS filter.

Most clients resolve a name and then connect to the address (requests, urllib3, asyncio, ``create_connection``),
so ``connect()`` only sees an IP. For a host-name rule of ``network.outgoing.filter`` to apply to that connect,
the shim remembers every name each address was an answer for: from the target's resolver and from the laptop's
(``*.corp.example`` resolved locally must also connect locally). An address can come from several names
(virtual hosts on one IP); each of them is kept, and a rule matching any of them decides.

Per process and bounded: the newest :data:`MAX_ADDRESSES` addresses, :data:`MAX_NAMES` names each. No lock:
each update is one dictionary assignment; a forked child starts with a copy, an exec'd one with nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the shim's start-up imports nothing it does not use
    from collections.abc import Iterable

MAX_ADDRESSES = 4096
MAX_NAMES = 8

_names: dict[str, tuple[str, ...]] = {}


def _key(ip: str) -> str:
    ip = ip.lower()
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]  # what an AF_INET6 socket connects to for an IPv4 answer
    return ip


def remember(ip: object, names: Iterable[object]) -> None:
    """Record that ``ip`` was an answer for each of ``names`` (the name asked, canonical name, aliases)."""
    if not isinstance(ip, str) or not ip:
        return
    key = _key(ip)
    old = _names.get(key, ())
    new = list(old)
    for name in names:
        if not isinstance(name, str):
            continue
        norm = name.lower().rstrip(".")
        if norm and norm != key and norm not in new:
            new.append(norm)
    new = new[-MAX_NAMES:]
    _names.pop(key, None)  # re-inserted last: the oldest address is the first to go
    while len(_names) >= MAX_ADDRESSES:
        try:
            del _names[next(iter(_names))]
        except (KeyError, RuntimeError, StopIteration):  # another thread got there first
            break
    _names[key] = tuple(new)


def names_for(ip: str) -> tuple[str, ...]:
    """Every name ``ip`` was an answer for in this process, oldest first; empty when none is known."""
    if not _names:
        return ()
    return _names.get(_key(ip), ())


def forget_all() -> None:
    _names.clear()
