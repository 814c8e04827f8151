"""The agent's stdin on an exec stream: a queue that never blocks the writer, with backpressure by watermarks.

The websocket and SPDY exec channels differ only in how one chunk goes on the wire and how stdin ends; the
queueing, the pause/resume signals to the listener and the wait for the stream's end are this one piece.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable
from typing import Callable

CHUNK = 256 * 1024
HIGH_WATER = 4 << 20
LOW_WATER = 1 << 20


class QueuedStdin:
    """Mixin for a :class:`~mirror_py.transport.channel.Channel`: ``listener`` is set by the channel's open."""

    listener: object

    def _init_stdin(self) -> None:
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._paused = False
        self._input_closed = False
        self._closed = asyncio.Event()  # set by the channel when the stream has ended

    def write(self, data: bytes) -> None:
        if self._input_closed or not data:
            return
        self._queue.append(data)
        self._queued += len(data)
        self._wake.set()
        if not self._paused and self._queued > HIGH_WATER:
            self._paused = True
            self.listener.on_pause()  # type: ignore[attr-defined]

    def close_input(self) -> None:
        if not self._input_closed:
            self._input_closed = True
            self._wake.set()

    async def _pump_stdin(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        """Sends what is queued, ``CHUNK`` bytes at a time, until stdin is closed and drained; the caller then
        ends stdin its protocol's way."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                data = self._queue.popleft()
                for off in range(0, len(data), CHUNK):
                    await send(data[off : off + CHUNK])
                self._queued -= len(data)
                if self._paused and self._queued < LOW_WATER:
                    self._paused = False
                    self.listener.on_resume()  # type: ignore[attr-defined]
            if self._input_closed:
                return

    async def wait_closed(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._closed.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
