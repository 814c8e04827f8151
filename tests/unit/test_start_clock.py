"""The bound of a session's start: fixed unless a step pushes it back, and the waiter hears the new bound."""

from __future__ import annotations

import asyncio

import pytest

from mirror_py import start_clock
from mirror_py.session.session import _within


def test_a_step_that_extends_the_clock_may_finish_past_the_first_bound():
    heard: list[float] = []
    clock = start_clock.StartClock(0.2, heard.append)

    async def slow_pull() -> str:
        await asyncio.sleep(0.1)
        start_clock.extend(0.5)  # what the placement does while the kubelet still pulls
        await asyncio.sleep(0.3)
        return "started"

    async def main() -> None:
        start_clock.current.set(clock)
        await _within(clock, slow_pull())

    asyncio.run(main())
    assert clock.total == pytest.approx(0.7)
    assert len(heard) == 1 and 0.4 < heard[0] <= 0.6


def test_past_the_bound_the_start_is_cancelled_and_cleans_up():
    cleaned = []

    async def stuck() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append(True)

    async def main() -> None:
        await _within(start_clock.StartClock(0.1), stuck())

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(main())
    assert cleaned == [True]


def test_the_starts_own_error_comes_through():
    async def broken() -> None:
        raise RuntimeError("no such pod")

    with pytest.raises(RuntimeError, match="no such pod"):
        asyncio.run(_within(start_clock.StartClock(5), broken()))


def test_extend_outside_a_start_does_nothing():
    start_clock.extend(10)  # no clock in this context: nothing to move, no error
