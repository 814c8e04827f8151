"""Keeping a long outage from flooding stderr: the same failure is said once, then again only now and then."""

from __future__ import annotations

import time
from typing import Callable


class RepeatLimiter:
    """Decides whether a message is worth saying: a new one always is, the same one again only after ``every``
    seconds. A session retrying every 2 s through a ten-minute outage says so about twenty times, not 300,
    and a change of reason (the API server is back, but the pod is not Ready yet) shows at once."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._last: str | None = None
        self._said_at = 0.0
        self.held = 0  # repeats not said since the message was last said

    def should_say(self, message: str) -> bool:
        now = self.clock()
        if message != self._last:
            self.held = 0  # the held repeats were of another message: not this one's to report
        if message != self._last or now - self._said_at >= self.every:
            self._last, self._said_at = message, now
            return True
        self.held += 1
        return False

    def take_held(self) -> int:
        """How many repeats of the message just said were held back before it; resets the count."""
        held, self.held = self.held, 0
        return held
