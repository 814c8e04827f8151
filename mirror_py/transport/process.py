"""A channel made of a local process's pipes: nsenter, ip netns exec, docker/podman exec -i."""

from __future__ import annotations

import asyncio
import fcntl

from ..errors import MirrorError
from .channel import Channel, ChannelListener

_F_SETPIPE_SZ = 1031


class _Protocol(asyncio.SubprocessProtocol):
    def __init__(self, channel: ProcessChannel, listener: ChannelListener) -> None:
        self.channel = channel
        self.listener = listener

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self.listener.on_bytes(data)
        else:
            self.listener.on_stderr(data)

    def pause_writing(self) -> None:
        self.listener.on_pause()

    def resume_writing(self) -> None:
        self.listener.on_resume()

    def connection_lost(self, exc: Exception | None) -> None:
        # Called once the process has exited and its pipes are drained, so stderr is complete.
        transport = self.channel.transport
        self.channel.closed.set()
        self.listener.on_closed(transport.get_returncode() if transport else None, None)


class ProcessChannel(Channel):
    def __init__(self, argv: list[str], description: str, python: str = "python3") -> None:
        self.argv = argv
        self.description = description
        self.python = python
        self.transport: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self.closed = asyncio.Event()

    async def open(self, listener: ChannelListener) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.transport, _ = await loop.subprocess_exec(
                lambda: _Protocol(self, listener),
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # Ctrl-C reaches the app; the session ends the agent itself
            )
        except OSError as exc:
            raise MirrorError(f"could not start the agent for {self.description}: {exc}") from None
        self._stdin = self.transport.get_pipe_transport(0)  # type: ignore[assignment]
        for fd in (0, 1):
            pipe = self.transport.get_pipe_transport(fd)
            fileobj = pipe.get_extra_info("pipe") if pipe is not None else None
            if fileobj is not None:
                try:
                    fcntl.fcntl(fileobj.fileno(), _F_SETPIPE_SZ, 1 << 20)  # fewer wake-ups per MiB relayed
                except (OSError, ValueError):  # ValueError: the agent already exited and the pipe is closed
                    pass

    def write(self, data: bytes) -> None:
        if self._stdin is not None and not self._stdin.is_closing():
            try:
                self._stdin.write(data)
            except (OSError, ValueError, RuntimeError):
                pass  # the agent is gone; on_closed reports why

    def close_input(self) -> None:
        if self._stdin is not None and not self._stdin.is_closing():
            self._stdin.close()

    async def wait_closed(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def kill(self) -> None:
        if self.transport is not None:
            try:
                self.transport.kill()
            except ProcessLookupError:
                pass

    def release(self) -> None:
        if self.transport is not None:
            self.transport.close()
