"""The session's one channel to its agent: start it, handshake, requests and stream bookkeeping.

The channel here is a local process's pipes (nsenter, ip netns exec, docker exec); the protocol on it is the
same for every transport.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import logging
from typing import Any

from mirror_py_agent import bootstrap
from mirror_py_agent import protocol as p
from mirror_py_agent.relay import Mux

from ..errors import MirrorError

log = logging.getLogger("mirror_py.session")
_F_SETPIPE_SZ = 1031


class RemoteError(OSError):
    """A request failed in the target; ``name`` is the symbolic errno the agent reported."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


class _AgentProcessProtocol(asyncio.SubprocessProtocol):
    def __init__(self, link: AgentLink) -> None:
        self.link = link

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self.link.on_bytes(data)
        else:
            self.link.on_stderr(data)

    def pause_writing(self) -> None:
        self.link.mux.pause_channel()

    def resume_writing(self) -> None:
        self.link.mux.resume_channel()

    def connection_lost(self, exc: Exception | None) -> None:
        # Called once the process has exited and all its pipes are drained, so stderr is complete.
        self.link.on_exit()


class AgentLink:
    def __init__(self, argv: list[str], description: str, startup_timeout: float = 30.0) -> None:
        self.argv = argv
        self.description = description
        self.startup_timeout = startup_timeout
        self.conn = p.Connection("session")
        self.mux = Mux(self.conn, self._write)
        self.hello: p.Hello | None = None
        self._transport: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._hello_waiter: asyncio.Future | None = None
        self._sids = itertools.count(1, 2)  # odd ids: the session opens streams; the agent may use even ones
        self._stderr = bytearray()
        self.closed = asyncio.Event()
        self.failure: str | None = None

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> p.Hello:
        loop = asyncio.get_running_loop()
        self._hello_waiter = loop.create_future()
        try:
            self._transport, _ = await loop.subprocess_exec(
                lambda: _AgentProcessProtocol(self),
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # Ctrl-C reaches the app; the session ends the agent itself
            )
        except OSError as exc:
            raise MirrorError(f"could not start the agent for {self.description}: {exc}") from None
        self._stdin = self._transport.get_pipe_transport(0)  # type: ignore[assignment]
        for fd in (0, 1):
            pipe = self._transport.get_pipe_transport(fd)
            fileobj = pipe.get_extra_info("pipe") if pipe is not None else None
            if fileobj is not None:
                try:
                    fcntl.fcntl(fileobj.fileno(), _F_SETPIPE_SZ, 1 << 20)
                except OSError:
                    pass
        self._write(bootstrap.bundle())
        self.conn.send_hello()
        self.mux.flush()
        try:
            hello = await asyncio.wait_for(asyncio.shield(self._hello_waiter), self.startup_timeout)
        except asyncio.TimeoutError:
            await self.close()
            raise MirrorError(
                f"the agent for {self.description} did not answer within {self.startup_timeout:g} s"
                f"{self._stderr_hint()}; raise agent.startup_timeout if the target is slow"
            ) from None
        self.hello = hello
        return hello

    def _stderr_hint(self) -> str:
        text = self._stderr.decode("utf-8", "replace").strip()
        return f" (it said: {text.splitlines()[-1]})" if text else ""

    async def close(self) -> None:
        """Ends the channel: stdin EOF makes the agent close its connections and exit."""
        if self._stdin is not None and not self._stdin.is_closing():
            self._stdin.close()
        if self._transport is not None:
            try:
                await asyncio.wait_for(self.closed.wait(), 5)
            except asyncio.TimeoutError:
                self._transport.kill()
                await self.closed.wait()
            self._transport.close()

    # ------------------------------------------------------------------------------------------ channel
    def _write(self, data: bytes) -> None:
        if self._stdin is not None and not self._stdin.is_closing():
            self._stdin.write(data)

    def on_stderr(self, data: bytes) -> None:
        self._stderr += data
        del self._stderr[:-8192]
        for line in data.decode("utf-8", "replace").splitlines():
            log.debug("agent: %s", line)

    def on_bytes(self, data: bytes) -> None:
        for ev in self.conn.receive_data(data):
            if self.mux.dispatch(ev):
                continue
            if isinstance(ev, p.Reply):
                fut = self._pending.pop(ev.id, None)
                if fut is not None and not fut.done():
                    fut.set_result(ev.result)
            elif isinstance(ev, p.ErrorReply):
                fut = self._pending.pop(ev.id, None) if ev.id is not None else None
                if fut is not None and not fut.done():
                    fut.set_exception(RemoteError(ev.errno, ev.message))
                else:
                    log.warning("the agent reported: %s %s", ev.errno, ev.message)
            elif isinstance(ev, p.Hello):
                if self._hello_waiter is not None and not self._hello_waiter.done():
                    self._hello_waiter.set_result(ev)
            elif isinstance(ev, p.ConnectionFailed):
                self._fail(f"the agent sent bytes that are not mirror-py protocol: {ev.message}")
                if self._stdin is not None:
                    self._stdin.close()
                return
        self.mux.flush()

    def on_exit(self) -> None:
        code = self._transport.get_returncode() if self._transport else None
        self._fail(self._exit_message(code))
        self.closed.set()

    def _exit_message(self, code: int | None) -> str:
        text = self._stderr.decode("utf-8", "replace")
        if self.hello is None:
            if code == 127 or ("No such file or directory" in text and "python" in text.lower()):
                return (
                    f"the target {self.description} has no {self.argv_python()!r} to run the agent"
                    " (exit code 127); point agent.python at an interpreter that exists in the target"
                )
            return f"the agent for {self.description} exited during start-up (exit code {code}){self._stderr_hint()}"
        return f"the agent for {self.description} exited (exit code {code}){self._stderr_hint()}"

    def argv_python(self) -> str:
        try:
            return self.argv[self.argv.index("-c") - 1]
        except ValueError:
            return "python3"

    def _fail(self, message: str) -> None:
        if self.failure is None:
            self.failure = message
        self.mux.close_all("ECONNRESET")
        err = RemoteError("ECONNRESET", self.failure)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        if self._hello_waiter is not None and not self._hello_waiter.done():
            self._hello_waiter.set_exception(MirrorError(self.failure))

    # ---------------------------------------------------------------------------------------- requests
    def new_stream_id(self) -> int:
        return next(self._sids)

    async def request(self, op: str, args: dict | None = None, opens_stream: int | None = None) -> Any:
        if self.failure is not None:
            raise RemoteError("ECONNRESET", self.failure)
        rid = self.conn.send_request(op, args, opens_stream)
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self.mux.flush()
        return await fut
