"""What the session needs from a channel: one byte stream to the agent's stdin/stdout.

Every transport — a local process's pipes, a Kubernetes exec websocket — implements :class:`Channel`, so the
session, protocol and agent are the same whichever way the agent is reached.
"""

from __future__ import annotations

import abc
from typing import Protocol


class ChannelListener(Protocol):
    def on_bytes(self, data: bytes) -> None: ...

    def on_stderr(self, data: bytes) -> None: ...

    def on_pause(self) -> None: ...

    def on_resume(self) -> None: ...

    def on_closed(self, exit_code: int | None, reason: str | None) -> None:
        """The agent is gone: ``exit_code`` when known, ``reason`` when the transport says why."""


class Channel(abc.ABC):
    #: how error messages name the target, e.g. "pid/4242" or "pod staging/api-7d9f (container app)"
    description: str = ""
    #: the interpreter that runs the agent, for the "no python3" message
    python: str = "python3"
    #: what to do when the target has no such interpreter
    no_python_hint: str = "point agent.python (--agent-python) at an interpreter that exists in the target"

    @abc.abstractmethod
    async def open(self, listener: ChannelListener) -> None:
        """Starts the agent; raises :class:`~mirror_py.errors.MirrorError` with the reason when it cannot."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Queues bytes for the agent's stdin; never blocks (backpressure comes as on_pause/on_resume)."""

    @abc.abstractmethod
    def close_input(self) -> None:
        """Ends the agent's stdin: the agent closes its connections and exits."""

    @abc.abstractmethod
    async def wait_closed(self, timeout: float) -> bool:
        """Waits for the agent to go; False on timeout."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Ends the agent at once (after wait_closed timed out)."""
