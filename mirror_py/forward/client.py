"""An asyncio client of a session's RPC socket (the framing of mirror_py/session/rpc_server.py).

The forwarder opens one connection per forwarded connection: a connect may wait for a slow destination, and
it must not hold up the others behind it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from typing import Any

_LEN = struct.Struct(">I")
_PEERCRED = struct.Struct("3i")


class SessionGone(Exception):
    """The session does not answer any more (stopped, or it was never this user's)."""


class CallFailed(Exception):
    """The session answered with an error: ``errno`` is its name (ECONNREFUSED, EAI_NONAME...)."""

    def __init__(self, errno: str, message: str) -> None:
        super().__init__(message)
        self.errno = errno
        self.message = message


class SessionClient:
    def __init__(self, path: str) -> None:
        self.path = path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> SessionClient:
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(self.path)
        except OSError as exc:
            raise SessionGone(f"the session at {self.path} is not running ({exc.strerror or exc})") from None
        sock = self._writer.get_extra_info("socket")
        try:
            uid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))[1]
        except (OSError, AttributeError):
            uid = os.getuid()
        if uid != os.getuid():  # a stale path taken by someone else: never send them anything
            self.close()
            raise SessionGone(f"the session socket {self.path} belongs to user {uid}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def call(self, request: dict) -> Any:
        """The ``ok`` value of the reply; raises CallFailed for an error reply, SessionGone when it ended."""
        assert self._reader is not None and self._writer is not None
        body = json.dumps(request).encode()
        try:
            self._writer.write(_LEN.pack(len(body)) + body)
            await self._writer.drain()
            (size,) = _LEN.unpack(await self._reader.readexactly(4))
            reply = json.loads(await self._reader.readexactly(size))
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise SessionGone(f"the session ended ({exc})") from None
        if "err" in reply:
            err = reply["err"]
            raise CallFailed(str(err.get("errno")), str(err.get("msg")))
        return reply.get("ok")


async def call(path: str, request: dict) -> Any:
    """One request on a connection of its own."""
    async with SessionClient(path) as client:
        return await client.call(request)
