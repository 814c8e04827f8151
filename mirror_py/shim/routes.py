"""Where each destination went and which rule sent it there, seen from inside the app.

The decision is made here, in the app's interpreter, so this is where it is counted and, when asked for
(``MIRROR_PY_LOG=route``, which ``mirror-py -v`` sets), said: once per destination and process, on the app's
stderr, as ``mirror-py: 10.0.3.7:5432 → pod (outgoing default: remote)``. Counts wait in a small table and
ride along with the next request this process makes to the session (rpc.py), or go in one request at exit:
a connection that stays local costs no round trip to be counted, and one that goes remote pays one dictionary
update on top of the round trip it makes anyway.
"""

from __future__ import annotations

import os
from typing import Optional

#: (protocol, address, port, the name the app asked for or None, remote?, the rule that decided, in words)
Decision = tuple[str, str, int, Optional[str], bool, str]
DEFAULT_REMOTE = "outgoing default: remote"  # what a connect request that says no "why" was decided by

_pending: dict[Decision, int] = {}  # decision -> count since the last report
_said: set[tuple] = set()  # destinations already logged by this process
_log: list[bool] = []  # MIRROR_PY_LOG asks for route lines (read once)
_exit_hook: list[bool] = []
MAX_PENDING = 1024  # distinct destinations held before a report is due anyway (a scanner, a crawler)


def _logging() -> bool:
    if not _log:
        words = os.environ.get("MIRROR_PY_LOG", "").lower().replace(",", " ").split()
        _log.append("route" in words)
    return _log[0]


def _where(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def note(decision: Decision) -> None:
    """One decision no request of its own reports: counted for the session's next request, and said the
    first time this destination is seen."""
    _pending[decision] = _pending.get(decision, 0) + 1
    if _logging():
        say(decision)
    if not _exit_hook:
        _exit_hook.append(True)
        import atexit

        atexit.register(flush)


def report_with(request: dict, decision: Decision) -> None:
    """A remote TCP connect: its own request to the session reports it, in two optional keys (none at all for
    the common case, a connect that goes remote by default), so it costs nothing to count."""
    if _logging():
        say(decision)
    if decision[3] is not None:
        request["name"] = decision[3]
    if decision[5] != DEFAULT_REMOTE:
        request["why"] = decision[5]


def say(decision: Decision) -> None:
    """The route line, once per destination and process."""
    proto, ip, port, name, remote, why = decision
    dest = (proto, ip, port)
    if dest in _said:
        return
    _said.add(dest)
    shown = _where(ip, port) + (f" ({name})" if name and name != ip else "")
    if proto != "tcp":
        shown = f"{proto} {shown}"
    line = f"mirror-py: {shown} \u2192 {'pod' if remote else 'local'} ({why})\n"
    try:
        os.write(2, line.encode("utf-8", "replace"))
    except OSError:
        pass


def take() -> list:
    """The pending counts as the session's ``routes`` field, emptied."""
    batch = [[*key, count] for key, count in _pending.items()]
    _pending.clear()
    return batch


def due() -> bool:
    return bool(_pending)


def flush() -> None:
    """At exit: the local decisions no request carried yet."""
    if not _pending:
        return
    from . import rpc

    try:
        rpc.call({"op": "routes"})
    except Exception:  # the session is gone: nothing to report to
        _pending.clear()


def forget_all() -> None:
    """In a forked child: the parent reports its own decisions."""
    _pending.clear()
    _said.clear()
