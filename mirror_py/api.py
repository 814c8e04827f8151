"""``mirror_py.connect()``: interpose on the current interpreter for the length of a ``with`` block.

The session still runs as a process of its own (``mirror-py _serve``); this process only installs the shim and
takes the target's environment, and puts both back exactly on exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING, Any

from .errors import MirrorError
from .shim import ready_line
from .terminal import printable

if TYPE_CHECKING:
    from mirror_py.shim.scope import local as LocalBlock

_MISSING = object()


class MirrorSession:
    """A live session for this process. Use it as a context manager, or call :meth:`close`."""

    def __init__(self, proc: subprocess.Popen, info: dict, saved_env: dict[str, Any]) -> None:
        self._proc = proc
        self.info = info
        self._saved_env = saved_env
        self.closed = False

    @property
    def target(self) -> str:
        return self.info.get("target", "")

    def local(self) -> LocalBlock:
        """A block (``with session.local():``, or ``@session.local()`` on a function) whose new connections,
        name lookups, file opens and listeners are this machine's, for the calling thread or asyncio task only.
        Nothing of the session is undone: files, sockets and listeners opened before keep the target's view,
        and ``os.environ`` stays the target's (it is one per process)."""
        from .shim.scope import local

        return local()

    def status(self) -> dict:
        """What the session is connected to and what it has done (the ``session status --json`` object).
        Raises MirrorError when the session is closed or does not answer."""
        from .shim import rpc

        if self.closed:
            raise MirrorError("the session is closed")
        try:
            reply = rpc.call({"op": "info"})
        except OSError as exc:
            raise MirrorError(str(exc).removeprefix("mirror-py: ")) from None
        if "err" in reply:
            raise MirrorError(str(reply["err"].get("msg")))
        return reply["ok"]

    def close(self) -> None:
        """Ends the session: writes remote files back, restores every patched name and environment variable,
        and stops the session process. Each step runs even if an earlier one failed; the first failure is
        raised at the end."""
        if self.closed:
            return
        self.closed = True
        failures: list[BaseException] = []
        for step in (self._uninstall, self._restore_env, self._stop):
            try:
                step()
            except Exception as exc:  # every step must run: the next ones undo what this one could not
                failures.append(exc)
        if failures:
            raise failures[0]

    @staticmethod
    def _uninstall() -> None:
        from . import shim

        shim.uninstall()

    def _restore_env(self) -> None:
        for key, value in self._saved_env.items():
            if value is _MISSING:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def _stop(self) -> None:
        try:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        finally:
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> MirrorSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(target: str | None = None, *, config: str | None = None, agent_python: str | None = None,
            startup_timeout: float | None = None) -> MirrorSession:
    """Starts a session on ``target`` and interposes on this interpreter until the session is closed.

    ``startup_timeout`` sets ``agent.startup_timeout`` (else the configuration's); the whole start may take a
    few times it and never longer (mirror_py/shim/ready_line.py)."""
    argv = [sys.executable, "-m", "mirror_py", "_serve", "--mode", "stdin"]
    if target:
        argv += ["--target", target]
    if config:
        argv += ["--config", config]
    if agent_python:
        argv += ["--agent-python", agent_python]
    if startup_timeout is not None:
        argv += ["--agent-startup-timeout", repr(float(startup_timeout))]
    errors = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors)
    try:
        ready = ready_line.read_ready(proc)
    except ready_line.SessionNotReady as exc:
        raise MirrorError(str(exc)) from None
    if ready is None:
        proc.wait(ready_line.MARGIN)
        errors.seek(0)
        text = errors.read().decode("utf-8", "replace").strip()
        raise MirrorError(text.splitlines()[-1].removeprefix("mirror-py: error: ") if text else
                          f"the mirror-py session exited with code {proc.returncode}")
    for note in ready.get("notes", ()):
        sys.stderr.write(printable(f"mirror-py: {note}") + "\n")
    saved: dict[str, Any] = {}
    for key, value in ready["env"].items():
        if os.environ.get(key) != value:
            saved[key] = os.environ.get(key, _MISSING)
            os.environ[key] = value
    from . import shim
    from .shim import settings

    settings.reset()
    shim.install()
    return MirrorSession(proc, ready.get("info", {}), saved)
