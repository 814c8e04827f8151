"""The session's name cache: one answer from the target's resolver serves every process of the session.

At a distance every lookup sent to the agent costs a round trip, and apps look the same names up again and
again (a client library resolves before each new connection). The cache sits in the session, behind the
shim's decisions: a name that the shim resolves locally (a ``local()`` block, ``network.dns.filter``,
numeric hosts, ``localhost``) never reaches it.

The rules:

- **Positive answers** are kept ``ttl`` seconds (``network.dns.cache_ttl``, default 5). The agent resolves
  with the C library's ``getaddrinfo``, which reports no TTL, so the bound is fixed: 5 s is the TTL that a
  cluster's DNS (CoreDNS's ``kubernetes`` plugin) gives service and pod records by default, so a cached answer
  is never older than one the pod itself may get from its nameserver's cache.
- **Negative answers** (no such name, no address of that family) are kept ``negative_ttl`` seconds (default
  1): long enough to absorb a burst of retries, short enough that a service being created is seen at once.
  Transient failures (``EAI_AGAIN``, a lost agent) are never kept.
- **The target's resolver files** (/etc/hosts, resolv.conf, nsswitch.conf, host.conf, gai.conf): the agent
  watches them (a long-polled ``dns_watch`` request) and the cache is emptied when one changes, so an edit of
  the pod's /etc/hosts is seen within about a second without asking the agent on every lookup. A new agent
  (a reconnect, maybe to another pod) empties it too.
- **Concurrent lookups** of the same question share one request to the agent, and its answer or error.

Keys are the whole question (function, name, port, family, type, protocol, flags), so different questions
never share an answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from typing import Any, Callable

from .agent_link import RemoteError
from .expiring import MISSING, ExpiringMap

#: The name service functions whose answers are kept; ``gethostname`` reads a file and is not a lookup.
CACHED_FUNCTIONS = frozenset(("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo"))
#: Errors that say "this name has no answer" rather than "the resolver could not answer now".
NEGATIVE_ERRORS = frozenset((
    "EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY",
    "H_ERRNO_1", "H_ERRNO_4",  # HOST_NOT_FOUND and NO_DATA of gethostbyaddr
))
MAX_ENTRIES = 4096  # the oldest answers go first beyond this: memory stays bounded whatever the app resolves

Fetch = Callable[[dict], Awaitable[Any]]


class DnsCache:
    """Answers by question, with single-flight requests; ``enabled=False`` passes every lookup through."""

    def __init__(self, enabled: bool = True, ttl: float = 5.0, negative_ttl: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._entries = ExpiringMap(MAX_ENTRIES, clock)  # question -> (ok, value)
        self._flights: dict[str, asyncio.Future] = {}
        self.stats = {"hits": 0, "misses": 0, "shared": 0, "flushes": 0}

    def flush(self) -> None:
        """Forgets every answer, and every answer still on its way (the resolver files changed)."""
        self._entries.flush()
        self.stats["flushes"] += 1

    async def lookup(self, args: dict, fetch: Fetch) -> Any:
        """The answer to ``args`` (a ``dns`` request without its op): from the cache, from a request already
        in flight, or from ``fetch(args)``. Raises the RemoteError the agent gave."""
        if not self.enabled or args.get("fn") not in CACHED_FUNCTIONS:
            return await fetch(args)
        key = json.dumps(args, sort_keys=True, separators=(",", ":"))
        entry = self._entries.get(key)
        if entry is not MISSING:
            self.stats["hits"] += 1
            ok, value = entry
            if ok:
                return value
            raise RemoteError(*value)
        flight = self._flights.get(key)
        if flight is None:
            self.stats["misses"] += 1
            # A task of its own: a caller that goes away (its app closed the RPC socket) must not cancel the
            # answer the other callers of the same question are waiting for.
            flight = asyncio.ensure_future(self._fetch(key, args, fetch))
            flight.add_done_callback(_retrieve)  # every caller may be gone: never "exception never retrieved"
            self._flights[key] = flight
        else:
            self.stats["shared"] += 1
        return await asyncio.shield(flight)

    async def _fetch(self, key: str, args: dict, fetch: Fetch) -> Any:
        epoch = self._entries.epoch
        try:
            value = await fetch(args)
        except RemoteError as exc:
            if exc.name in NEGATIVE_ERRORS:
                self._entries.put(key, (False, (exc.name, exc.message)), self.negative_ttl, epoch)
            raise
        finally:
            self._flights.pop(key, None)
        self._entries.put(key, (True, value), self.ttl, epoch)
        return value


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()
