"""The session's file metadata cache: a ``stat`` of a remote path asked again within a short bound costs no
round trip, for any process of the session.

At a distance every file request costs a round trip, and apps and the standard library stat the same paths
again and again: ``os.walk`` lstats every subdirectory it has just listed (``os.path.islink``), ``shutil.copy``
stats before it opens, ``pathlib`` checks ``exists()`` and then ``is_file()``. The cache sits in the session,
behind the shim's rules, so only paths of the target reach it.

The rules:

- **What is kept**: the answer of a successful ``stat``/``lstat`` (``fs.metadata_cache`` seconds, default 1;
  0 turns the cache off), and the stat of every entry of a directory listing (``os.scandir`` answers them
  all in one request), so that the ``lstat`` ``os.walk`` makes of each subdirectory it has just listed is
  free. Errors are never kept: a file that is about to appear is seen at once.
- **The bound** is the oldest an answer can be: a change the pod's own processes make is seen at the latest
  that many seconds later (like the attribute cache of an NFS client, whose shortest default is 3 s). File
  content is never taken from here: every ``open`` still reads the file in the target.
- **Changes made through mirror-py** (any file request that is not a pure read: a write or flush of an open
  file, ``open`` for writing or creating, ``rename``, ``unlink``, ``chmod``, ``utime``…) empty the whole cache
  before they are sent and again when they are answered. Not only the path touched: through a symlink, a hard
  link or a renamed directory one change is visible under many paths, and the cache does not guess which.
- **A new agent** (a reconnect, maybe to another pod) empties it too.

Keys are the path as the shim sends it and whether the last symlink is followed.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from .expiring import MISSING, ExpiringMap

#: File requests that change nothing in the target: every other one empties the cache.
READ_ONLY = frozenset(("stat", "access", "listdir", "scandir", "readlink", "realpath", "listxattr", "getxattr",
                       "statvfs", "read", "fstat"))
MAX_ENTRIES = 8192  # the oldest go first beyond this: memory stays bounded however big a tree is walked

_CHANGING_OPEN = os.O_ACCMODE | os.O_CREAT | os.O_TRUNC  # an open for writing, creating or truncating


def changes(req: dict) -> bool:
    """Whether the file request ``req`` may change something in the target."""
    fn = req.get("fn")
    if fn == "open":
        flags = req.get("flags")
        return not isinstance(flags, int) or bool(flags & _CHANGING_OPEN)
    if fn == "close":
        return False  # the writes before it emptied the cache already; closing changes no metadata
    return fn not in READ_ONLY


class MetadataCache:
    """Stat answers by (path, follow), each kept ``ttl`` seconds; ``ttl`` 0 keeps nothing."""

    def __init__(self, ttl: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._entries = ExpiringMap(MAX_ENTRIES, clock)  # (path, follow) -> stat; flushed by every change
        self._owner: Any = None  # the agent link the entries came from
        self.stats = {"hits": 0, "misses": 0, "flushes": 0}

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def bind(self, owner: Any) -> None:
        """The entries belong to one agent: a new one (a reconnect, another pod) starts from nothing."""
        if owner is not self._owner:
            self._owner = owner
            self.flush()

    def flush(self) -> None:
        if self._entries.flush():
            self.stats["flushes"] += 1

    def generation(self) -> int:
        """A mark to take before asking the agent: :meth:`put` with an older mark keeps nothing, because a
        change sent meanwhile may have made the answer stale before it arrived."""
        return self._entries.epoch

    def get(self, path: str, follow: bool) -> list | None:
        if not self.enabled:
            return None
        hit = self._entries.get((path, follow))
        if hit is not MISSING:
            self.stats["hits"] += 1
            return hit
        self.stats["misses"] += 1
        return None

    def put(self, path: str, follow: bool, st: list, generation: int) -> None:
        if self.enabled and isinstance(st, list):
            self._entries.put((path, follow), st, self.ttl, generation)

    def put_listing(self, directory: str, listing: Any, generation: int) -> None:
        """Keeps the stat of each entry of a ``scandir`` answer (``[name, kind, lstat, target, ino]``, with
        ``target`` the followed stat of a symlink, or its errno)."""
        if not self.enabled or generation != self._entries.epoch or not isinstance(listing, list):
            return
        base = directory.rstrip("/") + "/"
        for item in listing:
            if not isinstance(item, list) or len(item) < 4 or not isinstance(item[2], list):
                continue
            name, kind, lstat, target = item[0], item[1], item[2], item[3]
            self.put(base + name, False, lstat, generation)
            if kind != "l":
                self.put(base + name, True, lstat, generation)
            elif isinstance(target, list):
                self.put(base + name, True, target, generation)
