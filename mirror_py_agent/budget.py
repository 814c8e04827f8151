"""The agent's one memory budget: every byte it holds for data it cannot hand on yet counts against it.

In exec mode the agent lives in the target's own container, so its memory is the target's: a buffer that
grows with the traffic (a UDP flood on a relay socket while the session does not read, mirrored copies of
big uploads over a slow link, out-of-order bytes the capture sees before TCP has validated them) would take
the service down with it. The budget turns each of those into a bounded loss that is counted and reported:

- lossy data is dropped: a datagram when the channel is paused or the budget is full; a mirrored copy that
  falls too far behind is cut (the target's own connection never notices); a capture flow whose held
  out-of-order bytes do not fit is cut, the largest holders first;
- lossless data waits: TCP streams have per-stream credit and stop reading their socket, so their peers'
  kernels hold the bytes, not the agent; what a stream did read and cannot send yet (one read at most) is
  charged, and no stream reads more while the budget is full.

Held bytes are charged (:meth:`Budget.take`, :meth:`Budget.release`); bytes already queued toward the
channel are measured (a gauge, the channel writer's buffer), since that queue is where a session that stops
reading makes data pile up. The session sets the limit in its hello (``memory_budget``); an older session
sends none and the agent keeps :data:`DEFAULT_BUDGET`.

Standard library only, Python 3.9+.
"""

from __future__ import annotations

from typing import Callable

DEFAULT_BUDGET = 32 << 20
MIN_BUDGET = 4 << 20  # one frame is up to 1 MiB, and a copy's share is a quarter of the budget
MAX_BUDGET = 1 << 40
UNBOUNDED = 1 << 62  # the session's side of the relays: its memory is the laptop's

#: What the counters count, with the one line the session shows the first time each happens.
NOTICES = {
    "datagrams_dropped": "dropped UDP datagrams that reached a socket of this session while the session was "
    "not reading them fast enough",
    "copies_cut": "cut mirrored copies of incoming connections that fell too far behind the target's traffic "
    "(the target served them; the local app got only their beginning)",
    "flows_cut": "stopped mirroring connections whose out-of-order captured bytes did not fit (the target "
    "served them; the local app got only their beginning)",
}


def valid_limit(value: object) -> int | None:
    """The budget a session asked for, or None when it is missing or not a sane number of bytes."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_BUDGET <= value <= MAX_BUDGET:
        return None
    return value


def describe(size: int) -> str:
    """A size as people write it in the configuration (``32 MiB``)."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    if size >= 1 << 20:
        return f"{size / (1 << 20):.1f} MiB"
    return f"{size} bytes"


class Budget:
    """A byte limit shared by every buffer of one agent, with counters of what it cost.

    ``notify`` is called once per kind of loss (a key of :data:`NOTICES`) with a one-line explanation, so the
    session can tell the user once why a mirrored request or a datagram is missing."""

    def __init__(self, limit: int = DEFAULT_BUDGET, notify: Callable[[str, str], None] | None = None) -> None:
        self.limit = limit
        self.held = 0
        self.notify = notify
        self._gauges: list[Callable[[], int]] = []
        self.counters = {"datagrams_dropped": 0, "datagram_bytes_dropped": 0, "copies_cut": 0, "flows_cut": 0}
        self._noticed: set[str] = set()
        self.waiting: set[Callable[[], None]] = set()  # see when_room

    def add_gauge(self, gauge: Callable[[], int]) -> None:
        """Counts bytes that some other object holds and measures (the channel writer's queue)."""
        self._gauges.append(gauge)

    def used(self) -> int:
        total = self.held
        for gauge in self._gauges:
            total += gauge()
        return total

    def fits(self, n: int) -> bool:
        total = self.held + n  # used(), inlined: this runs for every datagram
        for gauge in self._gauges:
            total += gauge()
        return total <= self.limit

    def over(self) -> bool:
        return self.used() >= self.limit

    def charge(self, n: int) -> None:
        """Charges bytes that are held whatever the budget says (a TCP stream's bytes are never dropped)."""
        self.held += n

    def when_room(self, callback: Callable[[], None]) -> None:
        """Calls ``callback`` once, when released bytes bring the budget under its limit again (a TCP stream
        that stopped reading for the budget resumes then; the channel's own resume wakes every stream too)."""
        self.waiting.add(callback)

    def take(self, n: int) -> bool:
        """Charges ``n`` held bytes if they fit; False (nothing charged) if they do not."""
        if self.used() + n > self.limit:
            return False
        self.held += n
        return True

    def release(self, n: int) -> None:
        self.held -= n
        if self.held < 0:  # a bookkeeping slip must never make the budget look larger than it is
            self.held = 0
        if self.waiting:
            self.wake()

    def wake(self) -> None:
        """Calls the waiting callbacks if there is room now. The channel's queue shrinks without a release
        (the writer hands bytes to the pipe), so the mux also calls this after each write."""
        if self.waiting and self.used() < self.limit:
            waiting, self.waiting = self.waiting, set()
            for callback in waiting:
                callback()

    def count(self, kind: str, n: int = 1) -> None:
        """Records a loss; the first of each kind is reported through ``notify``."""
        self.counters[kind] += n
        if kind in NOTICES and kind not in self._noticed:
            self._noticed.add(kind)
            if self.notify is not None:
                self.notify(kind, f"the agent {NOTICES[kind]}, to keep its memory within agent.memory_budget "
                                  f"({describe(self.limit)}); counted in the agent's incoming stats")

    def drop_datagram(self, size: int) -> None:
        self.counters["datagram_bytes_dropped"] += size
        self.count("datagrams_dropped")

    def stats(self) -> dict:
        return {"limit": self.limit, "used": self.used(), "held": self.held, **self.counters}
