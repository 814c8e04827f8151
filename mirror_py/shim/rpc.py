"""The shim's blocking RPC client to the session.

One unix-socket connection per thread, opened on first use (never at start-up), and dropped in a forked
child, which must not share its parent's connection.
"""

from __future__ import annotations

import os
import socket as _socket_mod
import struct
import threading

from . import routes as _routes

_LEN = struct.Struct(">I")
_local = threading.local()
_generation = [0]
_open: list[_socket_mod.socket] = []


def _close_all() -> None:
    while _open:
        _open.pop().close()


class SessionUnavailable(OSError):
    pass


def _path() -> str:
    path = os.environ.get("MIRROR_PY_SESSION")
    if not path:
        raise SessionUnavailable("mirror-py: no session (MIRROR_PY_SESSION is not set)")
    return path


def _connection() -> _socket_mod.socket:
    conn = getattr(_local, "conn", None)
    if conn is not None and getattr(_local, "gen", -1) == _generation[0]:
        return conn
    # _socket.socket: a plain AF_UNIX socket, never routed through the patched class methods.
    sock = _socket_mod._socket.socket(_socket_mod.AF_UNIX, _socket_mod.SOCK_STREAM)  # type: ignore[attr-defined]
    try:
        sock.connect(_path())
    except OSError as exc:
        sock.close()
        raise SessionUnavailable(
            exc.errno or 0, f"mirror-py: the session is not running ({exc.strerror or exc}); was it stopped?"
        ) from None
    _check_owner(sock)
    _local.conn = sock
    _local.gen = _generation[0]
    if not _open:
        import atexit

        atexit.register(_close_all)
    _open.append(sock)
    return sock


_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _check_owner(sock: _socket_mod.socket) -> None:
    """Only a session of this user may answer. A process can outlive its session; the socket's path may then
    be taken by anyone who can create it (another user of a shared machine), and that process would send them
    its file contents and take their answers as the pod's. The kernel's peer credentials say who listens."""
    option = getattr(_socket_mod, "SO_PEERCRED", None)
    if option is None:  # not Linux: the session directory's 0700 mode is the only guard
        return
    try:
        _pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(_socket_mod.SOL_SOCKET, option, _PEERCRED.size))
    except OSError:
        uid = -1
    if uid != os.getuid():
        sock.close()
        raise SessionUnavailable(
            13, f"mirror-py: the session socket {_path()} is held by user {uid}, not by you ({os.getuid()}); "
            "the session that started this process has ended, so it is not used (start a new session)"
        )


def _recv_exact(sock: _socket_mod.socket, n: int) -> bytes:
    if n <= 65536:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise SessionUnavailable("mirror-py: the session closed the connection")
            buf += chunk
        return buf
    # Big bodies (file content) are received in place: no quadratic concatenation, one copy.
    out = bytearray(n)
    view = memoryview(out)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise SessionUnavailable("mirror-py: the session closed the connection")
        got += k
    return out  # type: ignore[return-value]


def call(request: dict, data: bytes | None = None, timeout: float | None = None) -> dict:
    """Sends one request and returns the raw reply: ``{"ok": ...}`` or ``{"err": {"errno", "msg"}}``.

    ``data`` travels raw after the request (file content); raw bytes in the reply come back as
    ``reply["data"]``. With ``timeout``, a reply that takes longer raises ``TimeoutError`` (``socket.timeout``):
    the app's own socket timeout bounds the wait even when the session or its agent does not answer; the
    connection, with its late reply, is dropped.
    """
    import json

    sock = _connection()
    if timeout is not None:
        sock.settimeout(timeout)
    if _routes.due():
        request = dict(request, routes=_routes.take())
    if data is not None:
        request = dict(request, bin=len(data))
    body = json.dumps(request).encode()
    try:
        if data is None:
            sock.sendall(_LEN.pack(len(body)) + body)
        else:
            sock.sendall(_LEN.pack(len(body)) + body)
            sock.sendall(data)
        (size,) = _LEN.unpack(_recv_exact(sock, 4))
        reply = json.loads(_recv_exact(sock, size))
        raw = reply.pop("bin", None) if isinstance(reply, dict) else None
        if raw is not None:
            reply["data"] = _recv_exact(sock, raw)
        if timeout is not None:
            sock.settimeout(None)
    except BaseException as exc:  # an interrupted call (Ctrl-C mid-read) leaves unread bytes: never reuse it
        _local.conn = None
        sock.close()
        if timeout is not None and isinstance(exc, TimeoutError):
            raise TimeoutError("timed out") from None
        if isinstance(exc, OSError) and not isinstance(exc, SessionUnavailable):
            # The session process ended under us: say that, not "Broken pipe".
            raise SessionUnavailable(exc.errno or 0, f"mirror-py: the session ended ({exc.strerror or exc}); "
                                     "was it stopped?") from None
        raise
    return reply


def reset_after_fork() -> None:
    """The child shares its parent's sockets: abandon them (without closing) and start new ones lazily."""
    _generation[0] += 1
    _open.clear()


def disconnect_all() -> None:
    """Uninstall: close this process's connections to the session; a later session gets new ones (a thread's
    cached connection is dropped through the generation, as after a fork)."""
    _generation[0] += 1
    _close_all()
