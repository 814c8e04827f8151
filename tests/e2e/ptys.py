"""Running a command with a pseudo-terminal as its stdout and stderr, as in the user's terminal window."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import time


def run_on_pty(argv: list[str], env: dict[str, str], *, until: bytes | None = None, timeout: float = 120,
               cwd: str | None = None) -> tuple[int, bytes]:
    """(exit status, everything written to the terminal). With ``until``, the command is sent SIGINT (Ctrl-C)
    once that text has appeared (for commands that run until stopped)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, cwd=cwd,
                            start_new_session=True)
    os.close(slave)
    out = b""
    interrupted = False
    deadline = time.monotonic() + timeout  # a bound on a hang, not a measurement
    try:
        while time.monotonic() < deadline:
            if until is not None and not interrupted and until in out:
                proc.send_signal(signal.SIGINT)
                interrupted = True
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    return proc.returncode, out
