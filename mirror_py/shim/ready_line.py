"""Waiting for a session process (``mirror-py _serve``) to be ready, for a bounded time.

``connect()``, the shim's auto-start and ``mirror-py session start`` each start a session process and wait for
its JSON line. A session that hangs (an API server that accepts and never answers, a bug) must not hang the
app with it. So the session says two things on stdout: at once, ``{"starting": {"within": S}}`` — S being the
most its start may take, from its own configuration, which the caller cannot read — and then the ready line
(``{"env": ..., "info": ...}``). The caller waits a fixed time for the first and S plus a margin for the
second; past either, it ends the session process and says so in one line.

Standard library only: the shim imports this inside the app's interpreter.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time

#: Seconds for a session process to load its configuration and say it is starting (Python's start-up with
#: mirror-py's imports on a slow laptop is a second or two).
FIRST_LINE_TIMEOUT = 60.0
#: Seconds beyond the session's own bound: it needs a moment to clean up and print its error.
MARGIN = 15.0


class SessionNotReady(Exception):
    """The session process did not answer in time; it has been stopped."""


def read_ready(proc: subprocess.Popen) -> dict | None:
    """The session's ready line as a dict, or None when the process ended without one (its stderr says why).

    Raises :class:`SessionNotReady` after stopping the process if a line is late."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    pending = b""
    deadline = time.monotonic() + FIRST_LINE_TIMEOUT
    waiting_for = "to say it was starting"
    while True:
        newline = pending.find(b"\n")
        if newline >= 0:
            line, pending = pending[:newline], pending[newline + 1:]
            message = json.loads(line)
            if "starting" not in message:
                return message
            within = float(message["starting"].get("within", 0))
            deadline = time.monotonic() + within + MARGIN
            waiting_for = f"to start within its own bound of {within:g} s"
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _stop(proc)
            raise SessionNotReady(f"the mirror-py session process (pid {proc.pid}) did not manage {waiting_for}; "
                                  "it was stopped. Run `mirror-py exec` with -v on the same target to see where "
                                  "it waits")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        pending += chunk


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM first: a session stopped during its start cleans up what it placed (an agent pod, a job)."""
    for sig, wait in ((signal.SIGTERM, MARGIN), (signal.SIGKILL, 5.0)):
        try:
            proc.send_signal(sig)
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except OSError:
            return
