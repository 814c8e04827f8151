"""The session's one channel to its agent: start it, handshake, requests and stream bookkeeping.

The channel may be a local process's pipes or a Kubernetes exec websocket; the protocol on it is the same.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable
from typing import Any, Callable

from mirror_py_agent import bootstrap
from mirror_py_agent import protocol as p
from mirror_py_agent.budget import DEFAULT_BUDGET
from mirror_py_agent.relay import Mux

from ..errors import MirrorError
from ..transport.channel import Channel

log = logging.getLogger("mirror_py.session")


class RemoteError(OSError):
    """A request failed in the target; ``name`` is the symbolic errno the agent reported."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


STREAM_ID_LIMIT = 1 << 32


class AgentLink:
    """Speaks the protocol over a :class:`~mirror_py.transport.channel.Channel` to one agent."""

    PING_TIMEOUT = 90.0

    def __init__(self, channel: Channel, startup_timeout: float = 30.0, ping_interval: float = 20.0,
                 memory_budget: int = DEFAULT_BUDGET) -> None:
        self.channel = channel
        self.ping_interval = ping_interval
        self.description = channel.description
        self.startup_timeout = startup_timeout
        # The hello's info carries the agent's settings: keepalive sets its silence limit, memory_budget what
        # its buffers may hold. An agent that does not know a key ignores it, and one that gets none keeps
        # its defaults, so either side may be the older.
        self.conn = p.Connection("session", info={"keepalive": ping_interval, "memory_budget": memory_budget})
        self.mux = Mux(self.conn, channel.write)
        self.hello: p.Hello | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._abandoned: dict[int, int | None] = {}  # request id -> the stream it opens, for replies nobody awaits
        self._hello_waiter: asyncio.Future | None = None
        self.pipelined: asyncio.Future | None = None  # what start() sent right behind the hello, see there
        self._next_sid = 1  # odd ids: the session opens streams; the agent uses even ones
        self._stderr = bytearray()
        self.closed = asyncio.Event()
        self.failure: str | None = None
        self._last_received = 0.0
        self._liveness: asyncio.Future | None = None
        self.on_accept: Callable[[p.Accept], None] | None = None  # incoming connections (agent-opened streams)
        self.requests: collections.Counter[str] = collections.Counter()  # sent, by op: the session's round trips

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self, pipelined: Callable[[AgentLink], Awaitable[Any]] | None = None) -> p.Hello:
        """Starts the agent and waits for its hello.

        ``pipelined`` (the placement's first requests, such as the target's environment) starts right behind
        the hello instead of after its answer: its requests travel with the bundle and the hello, and their
        answers come back with the agent's hello, one round trip less at a distance. The agent serves requests
        in the order they arrive and reads the hello first. Its outcome is :attr:`pipelined`."""
        loop = asyncio.get_running_loop()
        self._hello_waiter = loop.create_future()
        await self.channel.open(self)
        self.channel.write(bootstrap.bundle())
        self.conn.send_hello()
        self.mux.flush()
        if pipelined is not None:
            self.pipelined = asyncio.ensure_future(pipelined(self))
        try:
            hello = await asyncio.wait_for(asyncio.shield(self._hello_waiter), self.startup_timeout)
        except asyncio.TimeoutError:
            self._drop_pipelined()
            await self.close()
            raise MirrorError(
                f"the agent for {self.description} did not answer within {self.startup_timeout:g} s"
                f"{self._stderr_hint()}; raise agent.startup_timeout if the target is slow"
            ) from None
        except MirrorError:
            self._drop_pipelined()
            await self.close()
            raise
        except BaseException:
            self._drop_pipelined()
            raise
        self.hello = hello
        self._liveness = asyncio.ensure_future(self._keep_alive())
        return hello

    def _drop_pipelined(self) -> None:
        """The start failed: the pipelined requests' outcome is of no interest (their failure is the start's)."""
        task, self.pipelined = self.pipelined, None
        if task is not None:
            task.cancel()
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _keep_alive(self) -> None:
        """Pings the agent over the protocol itself, not the transport: the pings are data on the exec stream,
        so they also reset the cluster's idle timeout (4 h, or 5 min on hardened clusters; every
        ``agent.keepalive_interval``, 20 s by default). Only silence
        after a ping for PING_TIMEOUT ends the channel — a busy channel keeps sending, and a server whose
        read loop is blocked for a while is not a dead one."""
        token = 0
        loop = asyncio.get_running_loop()
        while self.failure is None:
            await asyncio.sleep(self.ping_interval)
            if self.failure is not None:
                return
            token += 1
            sent = loop.time()
            self.conn.send_ping(token)
            self.mux.flush()
            while self._last_received < sent and self.failure is None:
                if loop.time() - sent > self.PING_TIMEOUT:
                    log.warning("the agent for %s did not answer for %.0f s", self.description, self.PING_TIMEOUT)
                    self._fail(f"the agent for {self.description} stopped answering "
                               f"(no reply for {self.PING_TIMEOUT:.0f} s)")
                    self.channel.kill()
                    return
                await asyncio.sleep(min(1.0, self.ping_interval))

    def _stderr_hint(self) -> str:
        text = self._stderr.decode("utf-8", "replace").strip()
        return f" (it said: {text.splitlines()[-1]})" if text else ""

    async def close(self) -> None:
        """Ends the channel: stdin EOF makes the agent close its connections and exit."""
        if self._liveness is not None:
            self._liveness.cancel()
        self.channel.close_input()
        if not await self.channel.wait_closed(5):
            self.channel.kill()
            await self.channel.wait_closed(5)
        release = getattr(self.channel, "release", None)
        if release is not None:
            release()

    # ------------------------------------------------------------------------------------------ channel
    def on_pause(self) -> None:
        self.mux.pause_channel()

    def on_resume(self) -> None:
        self.mux.resume_channel()

    def on_stderr(self, data: bytes) -> None:
        self._stderr += data
        del self._stderr[:-8192]
        for line in data.decode("utf-8", "replace").splitlines():
            log.debug("agent: %s", line)

    def on_bytes(self, data: bytes) -> None:
        self._last_received = asyncio.get_running_loop().time()
        for ev in self.conn.receive_data(data):
            if self.mux.dispatch(ev):
                continue
            if isinstance(ev, p.Reply):
                fut = self._pending.pop(ev.id, None)
                if fut is not None and not fut.done():
                    fut.set_result(ev.result)
                elif ev.id in self._abandoned:
                    self._close_abandoned(ev.id)
            elif isinstance(ev, p.ErrorReply):
                self._abandoned.pop(ev.id, None)
                fut = self._pending.pop(ev.id, None) if ev.id is not None else None
                if fut is not None and not fut.done():
                    fut.set_exception(RemoteError(ev.errno, ev.message))
                elif ev.errno == "ENOBUFS":
                    log.warning("%s", ev.message)  # data dropped for the agent's memory budget: once per kind
                else:
                    log.warning("the agent reported: %s %s", ev.errno, ev.message)
            elif isinstance(ev, p.Accept):
                if self.on_accept is not None:
                    self.on_accept(ev)
                else:
                    self.conn.send_close(ev.stream, "ECONNREFUSED", "this session takes no incoming connections")
            elif isinstance(ev, p.Hello):
                if self._hello_waiter is not None and not self._hello_waiter.done():
                    self._hello_waiter.set_result(ev)
            elif isinstance(ev, p.ConnectionFailed):
                self._fail(
                    f"the agent for {self.description} sent bytes that are not mirror-py protocol ({ev.message})"
                    f"{self._stderr_hint()}"
                )
                self.channel.close_input()
                return
        self.mux.flush()

    def on_closed(self, exit_code: int | None, reason: str | None) -> None:
        self._fail(self._exit_message(exit_code, reason))
        self.closed.set()

    def _exit_message(self, code: int | None, reason: str | None) -> str:
        text = self._stderr.decode("utf-8", "replace") + (reason or "")
        said = f" ({reason})" if reason else self._stderr_hint()
        if self.hello is None:
            missing = "No such file or directory" in text or "not found" in text
            if code == 127 or (missing and "python" in text.lower()):
                return (
                    f"the target {self.description} has no {self.channel.python!r} to run the agent"
                    f" (exit code {code}); {self.channel.no_python_hint}"
                )
            return f"the agent for {self.description} exited during start-up ({_ending(code)}){said}"
        return f"the agent for {self.description} exited ({_ending(code)}){said}"

    def _fail(self, message: str) -> None:
        if self.failure is None:
            self.failure = message
        self.mux.close_all("ECONNRESET")
        err = RemoteError("ECONNRESET", self.failure)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        self._abandoned.clear()
        if self._hello_waiter is not None and not self._hello_waiter.done():
            self._hello_waiter.set_exception(MirrorError(self.failure))
            self._hello_waiter.exception()  # start() may already have failed: never log it as unretrieved

    # ---------------------------------------------------------------------------------------- requests
    def new_stream_id(self) -> int:
        """The next free odd stream id. Ids wrap below 2**32 (the frame header's field) and skip those still in
        use, so a long session never runs out: an id comes back only after two billion others, far beyond the
        life of any frame still in flight for it."""
        while True:
            sid = self._next_sid
            self._next_sid = sid + 2 if sid + 2 < STREAM_ID_LIMIT else 1
            if sid not in self.mux.streams and not self.conn.is_open(sid):
                return sid

    async def request(self, op: str, args: dict | None = None, opens_stream: int | None = None,
                      timeout: float | None = None) -> Any:
        """The agent's reply; ``asyncio.TimeoutError`` after ``timeout`` seconds. A request given up (timed out
        or cancelled) is remembered until its reply comes, so a stream the agent opened for it is closed."""
        if self.failure is not None:
            raise RemoteError("ECONNRESET", self.failure)
        rid, fut = self._send(op, args, opens_stream)
        loop = asyncio.get_running_loop()
        timer = None if timeout is None else loop.call_later(timeout, self._time_out, fut)
        try:
            return await fut
        finally:
            if timer is not None:
                timer.cancel()
            if self._pending.get(rid) is fut:  # given up: the reply is still to come
                del self._pending[rid]
                self._abandoned[rid] = opens_stream

    def send(self, op: str, args: dict | None = None) -> asyncio.Future:
        """Sends a request now and returns the future of its answer: for a caller that needs its request on
        the wire before the next one (``await request()`` sends only when the coroutine first runs)."""
        if self.failure is not None:
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(RemoteError("ECONNRESET", self.failure))
            return fut
        return self._send(op, args, None)[1]

    def _send(self, op: str, args: dict | None, opens_stream: int | None) -> tuple[int, asyncio.Future]:
        rid = self.conn.send_request(op, args, opens_stream)
        self.requests[op] += 1
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self.mux.flush()
        return rid, fut

    @staticmethod
    def _time_out(fut: asyncio.Future) -> None:
        if not fut.done():
            fut.set_exception(asyncio.TimeoutError())

    def _close_abandoned(self, rid: int) -> None:
        sid = self._abandoned.pop(rid, None)
        if sid is not None and self.conn.is_open(sid):
            self.mux.streams.pop(sid, None)
            self.conn.send_close(sid, "ECONNABORTED", "nobody waits for this connection any more")


def _ending(code: int | None) -> str:
    """An exec stream cut without a status (an API server restart, a dropped connection) has no exit code."""
    return f"exit code {code}" if code is not None else "its channel closed without an exit status"
