"""Watch streams with the real API server's resourceVersion semantics, initial events and bookmarks.

Clients of today do not list then watch: client-go's reflectors (``kubectl rollout status``, ``kubectl debug``
waiting for its container, every informer) open one watch with ``sendInitialEvents=true``,
``resourceVersionMatch=NotOlderThan`` and ``allowWatchBookmarks=true``, and wait for the BOOKMARK annotated
``k8s.io/initial-events-end`` before they consider their cache synced. A server that ignores those parameters
leaves them waiting for ever, so this module does what the watch cache does:

- ``resourceVersion`` unset or ``"0"``: an ADDED event for every object that matches, then the changes;
- ``resourceVersion=N``: the changes after N (410 Expired when N has left the event history);
- ``sendInitialEvents=true``: the current state as ADDED events whatever ``resourceVersion`` says (it is only a
  lower bound), then the initial-events-end bookmark; only with ``resourceVersionMatch=NotOlderThan`` and
  ``allowWatchBookmarks=true``, as the real validation requires;
- ``allowWatchBookmarks=true``: a BOOKMARK with the latest resourceVersion the stream has reached every
  ``bookmark_interval`` seconds, so a client that restarts its watch does not start from an expired version;
- ``timeoutSeconds``: the stream ends then, cleanly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tests.sandbox.cluster import Store, WatchEvent
from tests.sandbox.manifest import ApiError

INITIAL_EVENTS_END = "k8s.io/initial-events-end"


def _flag(query: dict[str, list[str]], name: str) -> bool | None:
    """A query boolean the way the API server parses it, None when absent."""
    values = query.get(name)
    if not values:
        return None
    return values[0].lower() not in ("0", "false")


@dataclass
class WatchOptions:
    """The watch-related ``ListOptions`` of a request, validated as the real API server validates them."""

    resource_version: str = ""
    resource_version_match: str = ""
    send_initial_events: bool | None = None
    bookmarks: bool = False
    timeout: float | None = None

    @classmethod
    def from_query(cls, query: dict[str, list[str]]) -> WatchOptions:
        def first(name: str) -> str:
            return query.get(name, [""])[0]

        opts = cls(
            resource_version=first("resourceVersion"),
            resource_version_match=first("resourceVersionMatch"),
            send_initial_events=_flag(query, "sendInitialEvents"),
            bookmarks=bool(_flag(query, "allowWatchBookmarks")),
        )
        timeout = first("timeoutSeconds")
        if timeout:
            try:
                opts.timeout = float(int(timeout))
            except ValueError:
                raise ApiError.bad_request(f'invalid value "{timeout}" for timeoutSeconds') from None
        if opts.resource_version not in ("", "0"):
            try:
                int(opts.resource_version)
            except ValueError:
                raise ApiError.bad_request(f"invalid resource version: {opts.resource_version}") from None
        problems = []
        if opts.send_initial_events is not None:
            if opts.resource_version_match != "NotOlderThan":
                problems.append(
                    "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch "
                    "to NotOlderThan"
                )
            if not opts.bookmarks and opts.send_initial_events:
                problems.append(
                    "allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true"
                )
        elif opts.resource_version_match:
            problems.append(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless "
                "sendInitialEvents is provided"
            )
        if problems:
            joined = problems[0] if len(problems) == 1 else "[" + ", ".join(problems) + "]"
            raise ApiError(422, "Invalid", f'ListOptions.meta.k8s.io "" is invalid: {joined}', {"kind": "ListOptions"})
        return opts

    @property
    def initial_events(self) -> bool:
        """Whether the stream starts with the current state (rather than with the changes after a version)."""
        if self.send_initial_events is not None:
            return self.send_initial_events
        return self.resource_version in ("", "0")


Send = Callable[[str, dict[str, Any]], Awaitable[None]]


def bookmark(kind: str, api_version: str, rv: int, initial_end: bool = False) -> dict[str, Any]:
    """A BOOKMARK's object: only the kind and the resourceVersion carry meaning."""
    meta: dict[str, Any] = {"resourceVersion": str(rv)}
    if initial_end:
        meta["annotations"] = {INITIAL_EVENTS_END: "true"}
    return {"kind": kind, "apiVersion": api_version, "metadata": meta}


async def serve(
    store: Store,
    resource: str,
    kind: str,
    api_version: str,
    namespace: str,
    matches: Callable[[dict[str, Any] | None], bool],
    options: WatchOptions,
    send: Send,
    bookmark_interval: float = 60.0,
) -> None:
    """Run one watch: ``send(type, object)`` for each event until the timeout or the client goes away.

    The subscription and the initial snapshot are taken under the store's lock, so no change falls between
    them; every event after the snapshot's version reaches the queue exactly once."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
    initial: list[dict[str, Any]] = []
    expired: ApiError | None = None
    with store.lock:
        unsubscribe = store.subscribe(
            lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev) if ev.resource == resource else None
        )
        reached = store.rv
        if options.initial_events:
            initial = [o for o in store.list(resource, namespace or None) if matches(o)]
        else:
            since = int(options.resource_version or 0)
            if store.history and since < store.history[0].rv - 1 and len(store.history) >= store.HISTORY:
                expired = ApiError(410, "Expired", f"too old resource version: {since} ({store.rv})")
            else:
                for ev in store.history:
                    if ev.rv > since and ev.resource == resource:
                        queue.put_nowait(ev)
    try:
        if expired is not None:
            await send("ERROR", expired.status())
            return
        for obj in initial:
            await send("ADDED", obj)
        if options.send_initial_events:
            await send("BOOKMARK", bookmark(kind, api_version, reached, initial_end=True))
        deadline = None if options.timeout is None else loop.time() + options.timeout
        next_bookmark = loop.time() + bookmark_interval
        while True:
            now = loop.time()
            if deadline is not None and now >= deadline:
                return
            wait = None if deadline is None else deadline - now
            if options.bookmarks:
                wait = min(wait if wait is not None else bookmark_interval, max(next_bookmark - now, 0.0))
            try:
                ev = await asyncio.wait_for(queue.get(), wait)
            except asyncio.TimeoutError:
                if options.bookmarks and loop.time() >= next_bookmark:
                    await send("BOOKMARK", bookmark(kind, api_version, reached))
                    next_bookmark = loop.time() + bookmark_interval
                continue
            reached = max(reached, ev.rv)
            kind_of_change = _change(ev, matches)
            if kind_of_change:
                await send(kind_of_change, ev.obj)
    finally:
        unsubscribe()


def _change(ev: WatchEvent, matches: Callable[[dict[str, Any] | None], bool]) -> str:
    """What a filtered watch reports for a store event: an object entering the selection is ADDED, leaving it
    DELETED, staying in it MODIFIED; nothing when it was never in it."""
    now, before = matches(ev.obj), matches(ev.old)
    if ev.type == "DELETED":
        return "DELETED" if before else ""
    if now and before:
        return "MODIFIED"
    if now:
        return "ADDED"
    if before:
        return "DELETED"
    return ""
