"""Containers with ``stdin: true``: their console, and ``pods/attach`` to it.

``kubectl debug -i`` (and ``kubectl run -i``, ``kubectl attach``) starts a container whose main process reads
stdin, waits for it to run, then attaches: the attach stream writes into that process's stdin and carries what
it prints. The container runtime keeps the process's stdin open between attaches (a pipe, or the master side
of a terminal with ``tty: true``) and writes its output to the container log, which is also what an attach
shows from the moment it joins. ``stdinOnce`` closes stdin when the first attach that used it ends.
"""

from __future__ import annotations

import contextlib
import os
import pty
import subprocess
import threading
from pathlib import Path
from typing import Any


class Console:
    """The stdin (and, with a terminal, the output side) a runtime holds for one container process."""

    def __init__(self, spec: dict[str, Any], log_path: Path) -> None:
        self.tty = bool(spec.get("tty"))
        self.stdin_once = bool(spec.get("stdinOnce"))
        self.log_path = log_path
        self._master = -1
        self._slave = -1
        self._pipe: Any = None
        self._lock = threading.Lock()
        self.stdin_closed = False
        self.output_done = threading.Event()  # all the process printed is in the log

    def popen_streams(self, log: Any) -> dict[str, Any]:
        """The Popen stdio for the process: the terminal's slave side, or a stdin pipe and the log."""
        if self.tty:
            self._master, self._slave = pty.openpty()
            return {"stdin": self._slave, "stdout": self._slave, "stderr": self._slave}
        return {"stdin": subprocess.PIPE, "stdout": log, "stderr": subprocess.STDOUT}

    def started(self, proc: subprocess.Popen) -> None:
        """Keep the process's stdin; with a terminal, copy what it prints into the container log."""
        if self.tty:
            os.close(self._slave)
            self._slave = -1
            threading.Thread(target=self._copy_output, name="sandbox-console", daemon=True).start()
        else:
            self._pipe = proc.stdin
            self.output_done.set()  # the process writes to the log itself

    def _copy_output(self) -> None:
        try:
            with open(self.log_path, "ab", buffering=0) as log:
                while True:
                    try:
                        data = os.read(self._master, 65536)
                    except OSError:  # EIO: the terminal's last process has gone
                        return
                    if not data:
                        return
                    log.write(data)
        finally:
            self.output_done.set()

    def write(self, data: bytes) -> None:
        with self._lock:
            if self.stdin_closed:
                return
            try:
                if self.tty:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(self._master, view) :]
                elif self._pipe is not None:
                    self._pipe.write(data)
                    self._pipe.flush()
            except OSError:
                self.stdin_closed = True

    def close_stdin(self) -> None:
        """End of input: EOF on the pipe, or the terminal's end-of-file character."""
        with self._lock:
            if self.stdin_closed:
                return
            self.stdin_closed = True
            with contextlib.suppress(OSError):
                if self.tty:
                    os.write(self._master, b"\x04")
                elif self._pipe is not None:
                    self._pipe.close()

    def resize(self, width: int, height: int) -> None:
        if self.tty and self._master >= 0:
            import fcntl
            import struct
            import termios

            with contextlib.suppress(OSError):
                fcntl.ioctl(self._master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    def close(self) -> None:
        with self._lock:
            self.stdin_closed = True
            for fd in (self._master, self._slave):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._master = self._slave = -1
            if self._pipe is not None:
                with contextlib.suppress(OSError):
                    self._pipe.close()
