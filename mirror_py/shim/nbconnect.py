"""A non-blocking remote connect returns at once, and the kernel delivers its outcome.

``connect()`` on a non-blocking socket (asyncio, trio, anyio, Tornado, a ``select`` loop) must not wait for the
target: the shim connects the app's socket to the session's holding endpoint, where the kernel keeps it in
SYN_SENT (not writable, ``SO_ERROR`` 0), hands its descriptor to the session with the request, and raises
``BlockingIOError(EINPROGRESS)`` — no round trip at all. When the agent's connect has an outcome, the session
moves the socket to its relay (writable, ``SO_ERROR`` 0) or has it refused (writable, ECONNREFUSED); see
mirror_py/session/connects.py for how and why.

The patched ``getsockopt(SOL_SOCKET, SO_ERROR)`` gives the target's own errno where the kernel could only say
ECONNREFUSED (ETIMEDOUT, EHOSTUNREACH, …), and a ``connect()`` repeated while the first is in flight answers
EALREADY as the kernel does.
"""

from __future__ import annotations

import _socket
import errno as _errno
import json
import os
import socket
import threading
from typing import Any, Callable

from . import net, rpc

_RAW = _socket.socket
_SOL_SOCKET = socket.SOL_SOCKET
_SO_ERROR = socket.SO_ERROR
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_ESTABLISHED, _SYN_SENT, _CLOSE = 1, 2, 7  # tcpi_state, the first byte of TCP_INFO (Linux)
PENDING = "pending"

_info: list[Any] = [None, None]  # [session path, the session's connect_info]
_outcomes: dict[tuple[str, int], dict] = {}  # told by the session, not asked for yet: local address -> outcome
_door = threading.local()
_generation = [0]


def usable(sock: Any) -> bool:
    """Whether ``sock``'s connect can be deferred: a non-blocking socket on a system that reports TCP state."""
    return _TCP_INFO is not None and sock.gettimeout() == 0.0 and hasattr(socket, "SCM_RIGHTS")


def _session_info() -> dict:
    path = os.environ.get("MIRROR_PY_SESSION")
    if _info[0] != path or _info[1] is None:
        reply = rpc.call({"op": "connect_info"})
        if "err" in reply:
            from . import errors

            raise errors.to_exception(reply["err"])
        _info[0], _info[1] = path, reply["ok"]
    return _info[1]


def _family_key(host: str) -> str:
    """The session keys endpoints by family as it reaches them: a v4-mapped address is IPv4 on the wire."""
    if host.startswith("::ffff:"):
        host = host[7:]
    return str(int(socket.AF_INET6 if ":" in host else socket.AF_INET))


def _door_socket() -> Any:
    info = _session_info()
    sock = getattr(_door, "sock", None)
    if sock is not None and getattr(_door, "gen", -1) == _generation[0] and _door.path == info["door"]:
        return sock  # this thread's connection to this session (a process may meet several sessions in turn)
    if sock is not None and getattr(_door, "gen", -1) == _generation[0]:
        sock.close()  # an earlier session's (a forked child's inherited one is left alone, as rpc.py does)
    sock = _RAW(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(info["door"])
    except OSError as exc:
        sock.close()
        raise rpc.SessionUnavailable(exc.errno or 0, f"mirror-py: the session is not running ({exc.strerror or exc})")
    rpc._check_owner(sock)
    _door.sock, _door.gen, _door.path = sock, _generation[0], info["door"]
    return sock


def _send(message: dict, fd: int | None = None) -> None:
    body = json.dumps(message).encode()
    sock = _door_socket()
    try:
        if fd is None:
            sock.send(body)
        else:
            socket.send_fds(sock, [body], [fd])
    except OSError as exc:
        _door.sock = None
        sock.close()
        raise rpc.SessionUnavailable(exc.errno or 0, f"mirror-py: the session ended ({exc.strerror or exc})")


def start(sock: Any, target: tuple[str, int, str | None]) -> bool:
    """Starts the connect of non-blocking ``sock`` to ``target`` in the target; False when this socket cannot
    take the deferred way (no holding endpoint for its family), and the caller connects it the blocking way."""
    info = _session_info()
    local = net._ensure_bound(sock)
    key = _family_key(local[0])
    hold, relay = info["hold"].get(key), info["relay"].get(key)
    if hold is None or relay is None:
        return False
    err = _RAW.connect_ex(sock, net._relay_address(sock, hold))
    if err not in (_errno.EINPROGRESS, _errno.EAGAIN):
        raise OSError(err, os.strerror(err))
    ip, port, _ = target
    _send({"op": "connect", "host": ip, "port": port, "local": local}, sock.fileno())
    remote = net.Remote("tcp", (ip, port), None, net._relay_address(sock, relay), tuple(local))
    remote.state, remote.deferred = PENDING, True
    net.register(sock, remote)
    return True


def _tcp_state(sock: Any) -> int:
    try:
        return _RAW.getsockopt(sock, socket.IPPROTO_TCP, _TCP_INFO, 1)[0]
    except OSError:
        return _CLOSE


def _errno_of(name: str) -> int:
    if name == "TIMEOUT":
        return _errno.ETIMEDOUT
    num = getattr(_errno, name, None)
    return num if isinstance(num, int) else _errno.EIO


def _told(local: tuple) -> dict | None:
    """The outcome the session sent on the door for the socket bound to ``local``, if it is here: the session
    sends it right after moving the socket, so reading it costs no round trip. Outcomes of other sockets read
    on the way are kept for them."""
    sock = getattr(_door, "sock", None)
    if sock is not None and getattr(_door, "gen", -1) == _generation[0]:
        while True:
            try:
                data = sock.recv(4096, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if not data:
                break
            try:
                msg = json.loads(data)
                _outcomes[(msg["local"][0], int(msg["local"][1]))] = msg["outcome"]
            except (ValueError, KeyError, TypeError, IndexError):
                continue
    host = local[0][7:] if local[0].startswith("::ffff:") else local[0]  # as the session keys it
    return _outcomes.pop((host, int(local[1])), None)


def outcome(info: net.Remote) -> dict:
    """The session's word on the connect of ``info`` (asked when it did not tell already); fills in the
    socket's address in the target."""
    out = _told(info.local)
    if out is None:
        reply = rpc.call({"op": "connect_outcome", "local": list(info.local)})
        out = reply.get("ok") or {"errno": (reply.get("err") or {}).get("errno", "EIO")}
    if "sock" in out:
        info.sock = tuple(out["sock"])
    return out


def settle(sock: Any, info: net.Remote) -> int:
    """``SO_ERROR`` of a socket whose deferred connect is not settled yet, as the kernel would give it in the pod:
    0 while in flight or once connected, else the target's errno (given once, as the kernel does)."""
    out = _told(info.local)  # told only once the socket was moved: its state is final then
    if out is None:
        state = _tcp_state(sock)
        if state == _SYN_SENT:
            return 0  # in flight: at the holding endpoint, or being connected to its relay
        if state != _CLOSE:
            info.state = None
            return _RAW.getsockopt(sock, _SOL_SOCKET, _SO_ERROR)
        # Closed: the connect failed, or the session is moving the socket right now. The session answers after
        # the move, so the kernel's state is final by then.
        out = outcome(info)
    elif "sock" in out:
        info.sock = tuple(out["sock"])
    if "errno" in out:
        info.state = None
        _RAW.getsockopt(sock, _SOL_SOCKET, _SO_ERROR)  # the refusal that delivered it
        return _errno_of(str(out["errno"]))
    if out.get("pending"):
        info.state = None  # this kernel gave up on its own (its SYN timeout) before the target answered
    return _RAW.getsockopt(sock, _SOL_SOCKET, _SO_ERROR)


def again(sock: Any, info: net.Remote) -> int:
    """``connect()`` called again while the first is in flight: the kernel's answers (EALREADY, then 0 once
    connected, or the connect's error)."""
    err = settle(sock, info)
    if err:
        return err
    if info.state == PENDING:
        return _errno.EALREADY
    return _RAW.connect_ex(sock, info.relay)


def forget(info: net.Remote) -> None:
    """The app closed the socket: the session drops what it keeps for it (and stops waiting for it)."""
    _told(info.local)
    try:
        _send({"op": "forget", "local": list(info.local)})
    except OSError:
        pass


def reset_after_fork() -> None:
    """A forked child opens its own door (the parent's connection is the parent's)."""
    _generation[0] += 1
    _outcomes.clear()


def make_getsockopt(orig: Callable) -> Callable:
    def getsockopt(self, level, option, *args):
        if option == _SO_ERROR and level == _SOL_SOCKET and not args and net.registry:
            info = net._lookup(self)
            if info is not None and info.state == PENDING:
                return settle(self, info)
        return orig(self, level, option, *args)

    return getsockopt
