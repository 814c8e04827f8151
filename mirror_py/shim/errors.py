"""Turning the session's symbolic errnos into the exceptions the app would get inside the pod."""

from __future__ import annotations

import errno as _errno
import os
import socket

from ..terminal import printable


def to_exception(err: dict) -> OSError:
    name = str(err.get("errno", "EIO"))
    msg = printable(str(err.get("msg", "")))  # the target's words end up in the app's tracebacks and logs
    if name.startswith("EAI_"):
        code = getattr(socket, name, socket.EAI_FAIL)
        return socket.gaierror(code, msg or name)
    if name == "TIMEOUT":  # the socket's timeout expired: Python's own exception, no errno
        return socket.timeout(msg or "timed out")
    if name.startswith("H_ERRNO_"):
        try:
            code = int(name[8:])
        except ValueError:
            code = 1
        return socket.herror(code, msg or "Unknown host")
    num = getattr(_errno, name, None)
    if isinstance(num, int):
        return OSError(num, msg or os.strerror(num))
    return OSError(_errno.EIO, f"{name}: {msg}")
