"""Answers kept for a while, shared by the session's name cache and file metadata cache.

Both caches have the same three rules: an entry is kept a given number of seconds, the oldest go first past a
bound (memory stays bounded whatever the app asks), and a flush also forgets answers still on their way (an
answer asked before the flush may describe a target that has changed since), which callers get by taking the
:attr:`epoch` before they ask and handing it to :meth:`put`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Callable

MISSING = object()


class ExpiringMap:
    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self.epoch = 0  # bumped by every flush

    def __len__(self) -> int:
        return len(self._entries)

    def flush(self) -> bool:
        """Forgets every entry and every answer on its way; says whether anything was kept."""
        had = bool(self._entries)
        self._entries.clear()
        self.epoch += 1
        return had

    def get(self, key: Hashable) -> Any:
        """The value kept for ``key``, or :data:`MISSING` (an expired entry is dropped)."""
        hit = self._entries.get(key)
        if hit is None:
            return MISSING
        if hit[0] > self._clock():
            return hit[1]
        del self._entries[key]
        return MISSING

    def put(self, key: Hashable, value: Any, ttl: float, epoch: int) -> None:
        """Keeps ``value`` for ``ttl`` seconds, unless it was asked before a flush (``epoch`` is older)."""
        if ttl <= 0 or epoch != self.epoch:
            return
        self._entries[key] = (self._clock() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
