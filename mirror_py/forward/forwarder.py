"""The listeners of a port-forward and the byte pumps behind them.

Forward: a connection accepted on the laptop gets a loopback socket of its own that the session's relay knows
in advance (``connect`` with that socket's address, as the shim does for an app), so what reaches the relay is
joined to an agent stream connected in the pod; the destination's name is resolved in the pod first
(``dns``), through the session's cache. Reverse: the session asks the agent to listen on a port in the target
and connects each connection it announces to an address on the laptop (mirror_py/session/incoming.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from typing import Any

from ..terminal import printable
from .client import CallFailed, SessionClient, SessionGone, call
from .specs import Forward, show_host

log = logging.getLogger("mirror_py.forward")
READ = 64 * 1024


def _numeric(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One direction until EOF, which is passed on as a half-close (psql and redis-cli close one way first)."""
    try:
        while True:
            data = await reader.read(READ)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()


async def splice(a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 b: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    try:
        await asyncio.gather(_pump(a[0], b[1]), _pump(b[0], a[1]))
    finally:
        a[1].close()
        b[1].close()


class ListenError(Exception):
    """A forward's port on this machine could not be had; the text names it and why."""


class Forwarder:
    """Every forward and reverse of one ``mirror-py port-forward``, on the session at ``session_path``."""

    def __init__(self, session_path: str, forwards: list[Forward], reverses: list[Forward]) -> None:
        self.session_path = session_path
        self.forwards = forwards
        self.reverses = reverses
        self.servers: list[asyncio.AbstractServer] = []
        self.reverse_subs: list[int] = []
        self.gone = asyncio.Event()  # the session ended: nothing can be forwarded any more
        self.gone_reason = ""
        self._tasks: set[asyncio.Future] = set()

    async def start(self) -> list[str]:
        """Opens every listener (laptop ones here, target ones through the session); lines saying where each
        listens. Raises OSError (a laptop port in use) or CallFailed (a target port) with what went wrong."""
        lines = []
        for i, fwd in enumerate(self.forwards):
            try:
                server = await asyncio.start_server(
                    lambda r, w, i=i: self._track(self._serve(self.forwards[i], r, w)), fwd.bind, fwd.port)
            except OSError as exc:
                why = os.strerror(exc.errno) if exc.errno else str(exc)
                raise ListenError(f"cannot listen on {show_host(fwd.bind)}:{fwd.port} on this machine: "
                                  f"{why.lower()}") from None
            self.servers.append(server)
            port = server.sockets[0].getsockname()[1]
            self.forwards[i] = Forward(fwd.bind, port, fwd.host, fwd.host_port)  # any free port: the one it got
            lines.append(f"forwarding {show_host(fwd.bind)}:{port} -> {show_host(fwd.host)}:{fwd.host_port} "
                         "in the target")
        for rev in self.reverses:
            res = await call(self.session_path, {"op": "reverse", "bind": rev.bind, "port": rev.port,
                                                 "host": rev.host, "host_port": rev.host_port, "pid": os.getpid()})
            self.reverse_subs.append(int(res["sub"]))
            lines.append(f"forwarding {show_host(rev.bind)}:{res['port']} in the target -> "
                         f"{show_host(rev.host)}:{rev.host_port} here")
        return lines

    def _track(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, fwd: Forward, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            remote = await self._open(fwd)
        except CallFailed as exc:
            log.warning("%s", printable(f"{fwd.host}:{fwd.host_port} in the target: {exc.message} ({exc.errno})"))
            writer.transport.abort()
            return
        except SessionGone as exc:
            writer.transport.abort()
            self.gone_reason = str(exc)
            self.gone.set()
            return
        await splice((reader, writer), remote)

    async def _open(self, fwd: Forward) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with SessionClient(self.session_path) as client:
            host = fwd.host
            if not _numeric(host):
                infos = await client.call({"op": "dns", "fn": "getaddrinfo", "host": host, "port": fwd.host_port,
                                           "family": 0, "type": socket.SOCK_STREAM, "proto": 0, "flags": 0})
                if not infos:
                    raise CallFailed("EAI_NONAME", f"{host} has no address")
                host = infos[0][4][0]
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                sock.bind(("127.0.0.1", 0))
                local = sock.getsockname()
                # Counted with the session's other connections, under the rule that sent it: this forward.
                request = {"op": "connect", "family": int(socket.AF_INET), "host": host, "port": fwd.host_port,
                           "local": [local[0], local[1]], "timeout": None, "why": f"port-forward {fwd}"}
                if host != fwd.host:
                    request["name"] = fwd.host
                res = await client.call(request)
                await asyncio.get_running_loop().sock_connect(sock, (res["relay"][0], int(res["relay"][1])))
            except BaseException:
                sock.close()
                raise
        return await asyncio.open_connection(sock=sock)

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for sub in self.reverse_subs:
            try:
                await call(self.session_path, {"op": "unreverse", "sub": sub})
            except (SessionGone, CallFailed):
                pass  # the session sweeps reverses whose process ended
        for task in list(self._tasks):
            task.cancel()
