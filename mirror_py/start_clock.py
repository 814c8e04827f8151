"""The bound of a session's start, which a slow image pull may push back.

A start is bounded as a whole (``START_BOUND_FACTOR`` x ``agent.startup_timeout``, mirror_py/session/session.py),
and whoever waits for the session counts on that bound (mirror_py/shim/ready_line.py). A first pull of the agent
image on a slow registry can outlast it while everything is fine: the placement then extends the clock of the
start it runs in, and the clock tells the waiters the new bound.
"""

from __future__ import annotations

import contextvars
import time
from typing import Callable

current: contextvars.ContextVar[StartClock | None] = contextvars.ContextVar("mirror_py_start_clock", default=None)


class StartClock:
    def __init__(self, bound: float, on_extend: Callable[[float], None] | None = None) -> None:
        self.deadline = time.monotonic() + bound
        self.total = bound
        self._on_extend = on_extend

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def extend(self, seconds: float) -> None:
        self.deadline += seconds
        self.total += seconds
        if self._on_extend is not None:
            self._on_extend(max(0.0, self.remaining()))


def extend(seconds: float) -> None:
    """Push back the bound of the start running in this context, if any."""
    clock = current.get()
    if clock is not None:
        clock.extend(seconds)
