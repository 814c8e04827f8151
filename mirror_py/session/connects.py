"""Non-blocking connects of the app: answered by the kernel, when the target's connect has an outcome.

A non-blocking ``connect()`` must return at once and later make the socket writable, with ``SO_ERROR`` saying
how it went: that is what asyncio, trio, Tornado and every ``select`` loop wait for. The target's connect takes
a round trip (or a kernel timeout), so the app's real socket has to wait somewhere the kernel keeps it *not*
writable, and then be moved to the outcome:

- **waiting**: the shim connects the app's socket to the session's *holding* endpoint, a loopback listener
  whose accept queue is kept full (backlog 0 and one connection that is never accepted). Linux drops a SYN to a
  full listener, so the socket sits in SYN_SENT: not writable, ``SO_ERROR`` 0, exactly a connect in flight.
  (A plain listener would not do: the kernel completes a handshake before ``accept()``, so the socket would be
  writable at once.) The shim hands the socket's descriptor to the session over the connect door (a unix
  socket that carries descriptors) with the request, and returns ``EINPROGRESS``.
- **connected**: when the agent's connect succeeded, the session ends the waiting connect with ``shutdown()``
  (a SYN_SENT socket is disconnected by it), clears the error that leaves, and connects the socket to its
  relay endpoint: the kernel completes that handshake, the socket becomes writable, ``SO_ERROR`` is 0.
- **failed**: the session connects the socket to its *refusing* endpoint, a loopback port that is bound but
  never listens: the kernel answers with a reset, so the socket becomes writable with ``SO_ERROR`` =
  ECONNREFUSED. The shim's ``getsockopt`` replaces that with the target's own errno (ETIMEDOUT,
  EHOSTUNREACH, …) from the outcome the session keeps (:meth:`Connects.outcome`).

Every wait has a bound: the agent's connect ends by the agent's or the kernel's timeout, and the session gives
up after :data:`CONNECT_BOUND` whatever the agent does. A socket the app closes before the outcome is
forgotten at once (the shim says so on the door).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
from typing import Callable

from .agent_link import AgentLink, RemoteError
from .relays import LOOPBACKS, TcpRelayListener, _key
from .rpc_server import RpcError, peer_uid

log = logging.getLogger("mirror_py.session")

#: Seconds the session waits for the agent's connect when the app gave no timeout: a little beyond Linux's own
#: (tcp_syn_retries 6: 127 s), so the target's kernel normally answers first, with its own errno.
CONNECT_BOUND = 135.0
#: How long an outcome is kept for the shim after the socket was moved (it asks for it when the app looks).
OUTCOME_TTL = 300.0
MAX_MESSAGE = 4096
_SCM_ROOM = socket.CMSG_SPACE(4)


class _Endpoints:
    """One family's holding and refusing endpoints (see the module's docstring)."""

    def __init__(self, host: str, family: int) -> None:
        self.hold = socket.socket(family, socket.SOCK_STREAM)
        self.filler = socket.socket(family, socket.SOCK_STREAM)
        self.refuse = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.hold.bind((host, 0))
            self.hold.listen(0)
            self.filler.connect(self.hold.getsockname())  # fills the accept queue: later SYNs are dropped
            self.refuse.bind((host, 0))  # bound and never listening: a connect to it is reset
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for sock in (self.filler, self.hold, self.refuse):
            sock.close()


class _Pending:
    __slots__ = ("client", "sock", "task", "timer")

    def __init__(self, sock: socket.socket, client: socket.socket) -> None:
        self.sock: socket.socket | None = sock
        self.client = client  # the door connection it came on, where the outcome is told
        self.task: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = None


def _address_for(sock: socket.socket, host: str, port: int) -> tuple:
    """``host``:``port`` as the app's socket connects to it (an IPv6 socket reaches IPv4 v4-mapped)."""
    if sock.family == socket.AF_INET6:
        return ("::ffff:" + host if "." in host else host, port, 0, 0)
    return (host, port)


class Connects:
    """The session's side of non-blocking connects: the door, the endpoints and the outcomes."""

    def __init__(self, link: Callable[[], AgentLink], listener: Callable[[], TcpRelayListener | None]) -> None:
        self._link = link
        self._listener = listener
        self.endpoints: dict[int, _Endpoints] = {}
        self.pending: dict[tuple[str, int], _Pending] = {}
        self.outcomes: dict[tuple[str, int], dict] = {}
        self.door: socket.socket | None = None
        self.path = ""
        self._clients: list[socket.socket] = []

    async def start(self, path: str) -> None:
        for host, family in LOOPBACKS:
            try:
                self.endpoints[family] = _Endpoints(host, family)
            except OSError:
                if family == socket.AF_INET:
                    raise
        door = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        door.bind(path)
        os.chmod(path, 0o600)
        door.listen(64)
        door.setblocking(False)
        self.door, self.path = door, path
        asyncio.get_running_loop().add_reader(door.fileno(), self._accept)

    def info(self) -> dict:
        """What the shim needs once per process: the door, and each family's holding endpoint and relay."""
        listener = self._listener()
        relays = listener.addresses if listener is not None else {}
        return {"door": self.path,
                "hold": {str(int(f)): list(e.hold.getsockname()[:2]) for f, e in self.endpoints.items()},
                "relay": {str(int(f)): list(a[:2]) for f, a in relays.items()}}

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for client in self._clients:
            loop.remove_reader(client.fileno())
            client.close()
        self._clients.clear()
        if self.door is not None:
            loop.remove_reader(self.door.fileno())
            self.door.close()
            self.door = None
        for key in list(self.pending):
            self._forget(key)
        for ends in self.endpoints.values():
            ends.close()
        self.endpoints.clear()

    # -------------------------------------------------------------------------------------------- the door
    def _accept(self) -> None:
        assert self.door is not None
        try:
            client, _ = self.door.accept()
        except (BlockingIOError, InterruptedError):
            return
        if peer_uid(client) != os.getuid():
            log.warning("refused a connect door connection from another user")
            client.close()
            return
        client.setblocking(False)
        self._clients.append(client)
        asyncio.get_running_loop().add_reader(client.fileno(), self._read, client)

    def _read(self, client: socket.socket) -> None:
        try:
            data, anc, _flags, _addr = client.recvmsg(MAX_MESSAGE, _SCM_ROOM)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, anc = b"", []
        fds = [fd for level, kind, raw in anc if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
               for fd in memoryview(raw).cast("i")]
        if not data:
            for fd in fds:
                os.close(fd)
            asyncio.get_running_loop().remove_reader(client.fileno())
            self._clients.remove(client)
            client.close()
            return
        try:
            msg = json.loads(data)
            if not isinstance(msg, dict):
                raise ValueError("not an object")
            self._message(msg, fds, client)
        except (ValueError, KeyError, TypeError, OSError) as exc:
            log.warning("ignored a bad message on the connect door: %s", exc)
            for fd in fds:
                os.close(fd)

    def _message(self, msg: dict, fds: list[int], client: socket.socket) -> None:
        key = _key(str(msg["local"][0]), int(msg["local"][1]))
        if msg.get("op") == "forget":
            if fds:
                raise ValueError("a forget carries no descriptor")
            self._forget(key)
            return
        if msg.get("op") != "connect" or len(fds) != 1:
            raise ValueError(f"unexpected message {msg.get('op')!r} with {len(fds)} descriptors")
        sock = socket.socket(fileno=fds.pop())  # the session's copy of the app's socket: closed by _move
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
            sock.close()
            raise ValueError("the descriptor is not a TCP socket")
        sock.settimeout(0.0)  # it is the app's non-blocking socket already: this changes nothing for the app
        self._forget(key)  # the same address again: its earlier socket is gone
        pending = _Pending(sock, client)
        self.pending[key] = pending
        pending.task = asyncio.ensure_future(self._connect(key, msg, pending))

    # ---------------------------------------------------------------------------------------- outcomes
    async def _connect(self, key: tuple[str, int], msg: dict, pending: _Pending) -> None:
        timeout = msg.get("timeout")
        bound = timeout if isinstance(timeout, (int, float)) and timeout > 0 else CONNECT_BOUND
        link: AgentLink | None = None
        sid = None
        try:
            link = self._link()
            listener = self._listener()
            if listener is None:
                raise RemoteError("ECONNRESET", "the session is not ready")
            relay = listener.address_for(key[0])
            sid = link.new_stream_id()
            listener.expect(key, sid)
            args = {"sid": sid, "host": str(msg["host"]), "port": int(msg["port"]), "timeout": bound}
            res = await link.request("connect", args, opens_stream=sid, timeout=bound + 1.0)
            outcome: dict = {"peer": res["peer"], "sock": res["sock"]}
            target = relay
        except asyncio.CancelledError:
            self._drop_stream(link, key, sid)
            raise
        except asyncio.TimeoutError:
            self._drop_stream(link, key, sid)
            outcome = {"errno": "ETIMEDOUT", "msg": os.strerror(errno.ETIMEDOUT)}
            target = None
        except RemoteError as exc:
            self._drop_stream(link, key, sid)
            outcome = {"errno": exc.name, "msg": exc.message}
            target = None
        except RpcError as exc:  # the link failed (a reconnect is under way)
            self._drop_stream(link, key, sid)
            outcome = {"errno": exc.errno, "msg": exc.message}
            target = None
        except OSError as exc:
            self._drop_stream(link, key, sid)
            name = errno.errorcode.get(exc.errno or errno.EIO, "EIO")
            outcome = {"errno": name, "msg": exc.strerror or str(exc)}
            target = None
        except Exception as exc:  # a bad request or an unexpected reply: the app still gets an answer
            log.warning("a connect for the app failed unexpectedly: %r", exc)
            self._drop_stream(link, key, sid)
            outcome = {"errno": "EIO", "msg": f"mirror-py could not connect: {exc}"}
            target = None
        self.outcomes[key] = outcome
        self._move(pending.sock, key, target)
        self._tell(pending.client, key, outcome)
        pending.sock = None
        pending.task = None
        pending.timer = asyncio.get_running_loop().call_later(OUTCOME_TTL, self._expire, key, pending)

    def _drop_stream(self, link: AgentLink | None, key: tuple[str, int], sid: int | None) -> None:
        listener = self._listener()
        if listener is not None:
            listener.pending.pop(key, None)
        if link is not None and sid is not None:
            link.mux.streams.pop(sid, None)

    def _move(self, sock: socket.socket | None, local: tuple[str, int], relay: tuple[str, int] | None) -> None:
        """Ends the socket's wait at the holding endpoint and connects it to its relay (``relay``) or to the
        refusing endpoint (None). Done in one go on the session's loop, so the shim, which asks the session when
        it sees the socket between the two, always gets the outcome after the move.

        The socket keeps its address ``local``, by which the relay and the shim know it: the kernel lets go of
        a port it picked itself when a connect is abandoned (``getsockname`` still shows it, the next connect
        takes another), so it is bound to it again, which pins it."""
        if sock is None:
            return
        try:
            try:
                sock.shutdown(socket.SHUT_RD)  # SYN_SENT -> CLOSE; the app's descriptor stays the same socket
            except OSError:
                pass  # the app's kernel gave up on its own (its SYN timeout): the socket is closed already
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # the reset the shutdown left is not the app's
            try:
                sock.bind(_address_for(sock, *local))
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EINVAL: the port was pinned already (the app bound it itself)
                    log.info("an app socket lost its port %s while connecting: %s", local[1], exc)
                    relay = None  # taken in between by another socket (very unlikely): its relay would not know it
            if relay is None:
                ends = self.endpoints.get(sock.family) or self.endpoints[socket.AF_INET]
                host, port = ends.refuse.getsockname()[:2]
            else:
                host, port = relay
            sock.connect_ex(_address_for(sock, host, port))
        except OSError as exc:
            log.debug("could not move an app socket to its outcome: %s", exc)
        finally:
            sock.close()  # the session's copy only: the app's descriptor holds the socket

    @staticmethod
    def _tell(client: socket.socket, key: tuple[str, int], outcome: dict) -> None:
        """Sends the outcome to the shim after the move, so that it need not ask (a round trip saved per
        connect). Never waits: a shim that does not read gets nothing more, and asks when it needs to."""
        try:
            client.send(json.dumps({"local": list(key), "outcome": outcome}).encode())
        except OSError:
            pass

    def outcome(self, local: tuple[str, int]) -> dict:
        """The outcome of the connect of the app socket bound to ``local``: ``{"pending": true}`` while the agent
        connects, then ``{"peer", "sock"}`` or ``{"errno", "msg"}``."""
        key = _key(*local)
        found = self.outcomes.get(key)
        if found is not None:
            return found
        if key in self.pending:
            return {"pending": True}
        return {"errno": "ENOTCONN", "msg": os.strerror(errno.ENOTCONN)}

    def _forget(self, key: tuple[str, int]) -> None:
        pending = self.pending.pop(key, None)
        self.outcomes.pop(key, None)
        if pending is None:
            return
        if pending.task is not None:
            pending.task.cancel()
        if pending.timer is not None:
            pending.timer.cancel()
        if pending.sock is not None:
            pending.sock.close()
            pending.sock = None

    def _expire(self, key: tuple[str, int], pending: _Pending) -> None:
        if self.pending.get(key) is pending:
            self.pending.pop(key, None)
            self.outcomes.pop(key, None)

