"""``mirror_py.connect()``: interpose on the current interpreter for the length of a ``with`` block.

The session still runs as a process of its own (``mirror-py _serve``); this process only installs the shim and
takes the target's environment, and puts both back exactly on exit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from .errors import MirrorError

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

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        from . import shim

        shim.uninstall()
        for key, value in self._saved_env.items():
            if value is _MISSING:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self._proc.stdin is not None:
            self._proc.stdin.close()
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
            startup_timeout: float = 60.0) -> MirrorSession:
    """Starts a session on ``target`` and interposes on this interpreter until the session is closed."""
    argv = [sys.executable, "-m", "mirror_py", "_serve", "--mode", "stdin"]
    if target:
        argv += ["--target", target]
    if config:
        argv += ["--config", config]
    if agent_python:
        argv += ["--agent-python", agent_python]
    errors = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(startup_timeout)
        errors.seek(0)
        text = errors.read().decode("utf-8", "replace").strip()
        raise MirrorError(text.splitlines()[-1].removeprefix("mirror-py: error: ") if text else
                          f"the mirror-py session exited with code {proc.returncode}")
    ready = json.loads(line)
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
