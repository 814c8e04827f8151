"""A connection to the API server opened ahead of the exec websocket that will use it.

At a distance a fresh connection costs its TCP handshake and its TLS handshake (one round trip, plus two for
TLS 1.2 or one for TLS 1.3) before the exec upgrade can even be asked. Those do not depend on the pod: the
session opens the connection while it looks the target up, and the first exec stream of the start sends its
upgrade on it. The REST calls cannot lend theirs (the client library's pool owns it, and the websocket client
needs an asyncio transport), so this is a second connection, made in parallel instead of in sequence.

Whatever goes wrong with it (refused, timed out, closed by the server while it waited) only means it is not
used: the exec stream then connects as it always did and reports its own errors.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

from .dial import open_connection

log = logging.getLogger("mirror_py.session")


class WarmConnection:
    """One TCP (+TLS) connection to ``configuration.host``, opened at :meth:`start` (through the chosen proxy,
    if any: transport/dial.py), taken once by :meth:`take`."""

    def __init__(self, configuration: Any, timeout: float) -> None:
        self.cfg = configuration
        self.timeout = timeout
        self._task: asyncio.Future | None = None
        self.taken = False

    @staticmethod
    def usable(configuration: Any) -> bool:
        """An http(s) server with a host name."""
        parts = urlsplit(str(configuration.host))
        return parts.scheme in ("https", "http") and bool(parts.hostname)

    def start(self) -> None:
        if self._task is None and self.usable(self.cfg):
            self._task = asyncio.ensure_future(open_connection(self.cfg, self.timeout))

    async def take(self) -> asyncio.BaseTransport | None:
        """The open connection, once; None when there is none (not started, failed, closed, or taken)."""
        task, self._task = self._task, None
        if task is None:
            return None
        self.taken = True
        try:
            transport, waiting = await task
        except Exception as exc:  # refused, timed out, a bad certificate file: the exec stream will say
            log.debug("the connection opened ahead for the exec stream failed (%r); connecting anew", exc)
            return None
        if waiting.lost or transport.is_closing():
            transport.close()
            return None
        return transport

    def close(self) -> None:
        """Drops the connection if nobody took it."""
        task, self._task = self._task, None
        if task is None:
            return
        if task.done():
            if not task.cancelled() and task.exception() is None:
                task.result()[0].close()
        else:
            task.cancel()
            task.add_done_callback(_close_late)


def _close_late(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result()[0].close()
