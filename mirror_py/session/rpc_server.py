"""The unix-socket RPC server that shims ask before every remote operation.

Framing: a 4-byte big-endian length, then a JSON object. Each shim thread has its own connection and makes
one call at a time, so a connection is served in order while connections run concurrently. File content
travels raw, never inside JSON: a message whose object has ``"bin": N`` is followed by N bytes (a request's
arrive as ``req["data"]``; a handler returns :class:`Binary` to send its own).

Only processes of the session's own user may use it: the socket is 0600 in a 0700 directory, and the peer's
credentials are checked on accept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable
from typing import Any, Callable

from .counters import SessionCounters

log = logging.getLogger("mirror_py.session")

MAX_REQUEST = 1 << 20
MAX_BINARY = 64 << 20
_LEN = struct.Struct(">I")
_PEERCRED = struct.Struct("3i")

Handler = Callable[[dict], Awaitable[Any]]


class RpcError(Exception):
    """A call failed: sent back to the shim as ``{"err": {"errno": ..., "msg": ...}}``."""

    def __init__(self, errno: str, message: str) -> None:
        super().__init__(message)
        self.errno = errno
        self.message = message


class Binary:
    """A handler's result with raw bytes attached: ``value`` goes in the JSON, ``data`` after it."""

    __slots__ = ("data", "value")

    def __init__(self, value: Any, data: bytes) -> None:
        self.value = value
        self.data = data


def peer_uid(sock: socket.socket) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None
    return _PEERCRED.unpack(creds)[1]


class RpcServer:
    def __init__(self, path: str, handlers: dict[str, Handler], counters: SessionCounters | None = None) -> None:
        self.path = path
        self.handlers = handlers
        self.counters = counters if counters is not None else SessionCounters()
        self.server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, self.path)
        os.chmod(self.path, 0o600)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self._writers):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        uid = peer_uid(sock) if sock is not None else None
        if uid != os.getuid():
            log.warning("refused a shim connection from uid %s", uid)
            writer.close()
            return
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readexactly(4)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                (size,) = _LEN.unpack(head)
                if size > MAX_REQUEST:
                    await self._send(writer, {"err": {"errno": "EMSGSIZE", "msg": "request too large"}})
                    return
                body = await reader.readexactly(size)
                reply = await self._call(body, reader)
                if reply is None:
                    return
                await self._send(writer, reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _call(self, body: bytes, reader: asyncio.StreamReader | None = None) -> dict | None:
        """The reply to one request; None when the connection must close (its framing cannot be trusted)."""
        try:
            req = json.loads(body)
            if not isinstance(req, dict):
                raise ValueError("a request must be a JSON object")
            routes = req.pop("routes", None)
            if routes is not None:  # a shim's routing decisions since its last request (shim/routes.py)
                self.counters.add_routes(routes)
            size = req.pop("bin", None)
            if size is not None:
                if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_BINARY:
                    return None
                if reader is None:
                    raise ValueError("raw bytes are not expected here")
                req["data"] = await reader.readexactly(size)
            handler = self.handlers.get(req.get("op"))
            if handler is None:
                return {"err": {"errno": "ENOTSUP", "msg": f"unknown operation {req.get('op')!r}"}}
            return {"ok": await handler(req)}
        except RpcError as exc:
            self.counters.errors[exc.errno] += 1
            return {"err": {"errno": exc.errno, "msg": exc.message}}
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: too deeply nested JSON
            return {"err": {"errno": "EINVAL", "msg": f"bad request: {exc}"}}

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, reply: dict) -> None:
        result = reply.get("ok")
        raw = b""
        if isinstance(result, Binary):
            reply = {"ok": result.value, "bin": len(result.data)}
            raw = result.data
        data = json.dumps(reply).encode()
        writer.write(_LEN.pack(len(data)) + data)
        if raw:
            writer.write(raw)
        await writer.drain()
