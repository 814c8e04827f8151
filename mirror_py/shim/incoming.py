"""Incoming traffic: the app's listening sockets receive the connections that reach the target.

The app's listener stays a real local socket. ``bind`` takes the requested port when it is free here, else any
port, and ``getsockname`` keeps reporting the requested address, so the app's idea of where it listens is the
pod's. ``listen`` subscribes the port (after ``network.incoming.port_mapping``) with the session; the session
then connects each mirrored or stolen connection to the listener, and ``accept`` asks it whom that connection
really came from, so ``getpeername`` (and the address ``accept`` returns) is the target's client.

A listener outlives the process that bound it: forked workers share it, and gunicorn, uvicorn ``--reload`` and
multiprocessing hand it to exec'd children, where it may even get another descriptor number. The socket's
inode identifies it across all of them; a table of this process's listeners, keyed by inode, travels to
children in :data:`ENV_VAR`. Closing a listener tells the session, which unsubscribes only when no process
holds the socket any more.
"""

from __future__ import annotations

import _socket
import errno
import os
import socket
import sys
from typing import Any, Callable

from . import net, rpc, scope, settings

ENV_VAR = "MIRROR_PY_LISTENERS"
_RAW = _socket.socket
_STREAM = socket.SOCK_STREAM
_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_LOOPBACK = ("127.", "::1", "::ffff:127.")


class Listener:
    __slots__ = ("actual", "family", "inode", "remote_port", "requested", "sub")

    def __init__(self, inode: int, family: int, requested: int, actual: tuple, remote_port: int,
                 sub: int | None = None) -> None:
        self.inode = inode
        self.family = family
        self.requested = requested
        self.actual = actual
        self.remote_port = remote_port
        self.sub = sub

    def record(self) -> dict:
        return {"family": self.family, "requested": self.requested, "actual": list(self.actual[:2]),
                "remote": self.remote_port, "sub": self.sub}


listeners: dict[int, Listener] = {}  # fd -> listener of this process
_inherited: dict[int, dict] = {}  # inode -> record, from the parent's table
_warned: set[str] = set()


def _load_inherited() -> None:
    raw = os.environ.get(ENV_VAR)
    if not raw:
        return
    import json

    try:
        table = json.loads(raw)
        _inherited.update({int(k): v for k, v in table.items()})
    except (ValueError, TypeError, AttributeError):
        return
    if _inherited:
        net.adopt = adopt


def _publish() -> None:
    """Keeps the table in the environment, for children this process execs."""
    import json

    table = {str(ino): rec for ino, rec in _inherited.items()}
    table.update({str(lst.inode): lst.record() for lst in listeners.values()})
    if table:
        os.environ[ENV_VAR] = json.dumps(table, separators=(",", ":"))
    else:
        os.environ.pop(ENV_VAR, None)


def _warn(text: str) -> None:
    if text not in _warned:
        _warned.add(text)
        from ..terminal import printable

        sys.stderr.write(printable(f"mirror-py: warning: {text}") + "\n")


def remote_port(port: int) -> int | None:
    """The target port a local listening port stands for, or None when the port stays purely local."""
    if scope.is_local():
        return None  # bound in a local block: a plain listener of this machine
    st = settings.get()
    if st.incoming_mode == "off" or not port or port in st.ignore_ports:
        return None
    return st.port_mapping.get(port, port)


def _register(sock: Any, requested_port: int, remote: int) -> Listener:
    fd = sock.fileno()
    actual = _RAW.getsockname(sock)
    lst = Listener(os.fstat(fd).st_ino, sock.family, requested_port, tuple(actual[:2]), remote)
    listeners[fd] = lst
    net.register(sock, net.Remote("listen", None, (actual[0], requested_port), None, tuple(actual[:2])))
    _publish()
    return lst


def adopt(sock: Any) -> Any:
    """A listener inherited from the parent process (found by its inode), registered here on first use."""
    if not _inherited or sock.family not in _FAMILIES:
        return None
    fd = sock.fileno()
    if fd < 0:
        return None
    try:
        rec = _inherited.get(os.fstat(fd).st_ino)
    except OSError:
        return None
    if rec is None:
        return None
    actual = tuple(rec["actual"])
    lst = Listener(os.fstat(fd).st_ino, int(rec["family"]), int(rec["requested"]), actual, int(rec["remote"]),
                   rec.get("sub"))
    listeners[fd] = lst
    return net.register(sock, net.Remote("listen", None, (actual[0], lst.requested), None, actual))


def _listener(sock: Any) -> Listener | None:
    fd = sock.fileno()
    lst = listeners.get(fd)
    if lst is None and _inherited and adopt(sock) is not None:
        lst = listeners.get(fd)
    if lst is not None and lst.inode != _inode(fd):
        listeners.pop(fd, None)  # the descriptor was reused for another socket
        return None
    return lst


def _inode(fd: int) -> int:
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return -1


def _subscribe(lst: Listener, backlog: int) -> None:
    host = lst.actual[0]
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host in ("::", "::ffff:0.0.0.0"):
        host = "::1"
    try:
        reply = rpc.call({"op": "listen", "inode": lst.inode, "port": lst.remote_port, "requested": lst.requested,
                          "local": [host, lst.actual[1]], "family": int(lst.family), "backlog": backlog})
    except OSError as exc:
        _warn(f"port {lst.requested} gets no traffic from the target: {exc}")
        return
    if "err" in reply:
        _warn(f"port {lst.requested} gets no traffic from the target: {reply['err'].get('msg')}")
        return
    res = reply["ok"]
    for text in res.get("warnings") or ():
        _warn(text)
    lst.sub = res.get("sub")
    _publish()


# ---------------------------------------------------------------------------------------- patched methods
def make_bind(orig: Callable) -> Callable:
    def bind(self, address):
        if (self.family not in _FAMILIES or self.type != _STREAM or not isinstance(address, tuple)
                or len(address) < 2 or not isinstance(address[1], int)):
            return orig(self, address)
        remote = remote_port(address[1])
        if remote is None:
            return orig(self, address)
        try:
            orig(self, address)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            orig(self, (address[0], 0, *address[2:]))  # taken here: any port, the target's clients won't know
        _register(self, address[1], remote)

    return bind


def make_listen(orig: Callable) -> Callable:
    def listen(self, *args):
        orig(self, *args)
        if (not listeners and not _inherited) or scope.is_local():
            return
        lst = _listener(self)
        if lst is not None and lst.sub is None:
            _subscribe(lst, int(args[0]) if args else min(socket.SOMAXCONN, 128))

    return listen


def _view(addr: tuple, family: int) -> tuple:
    host, port = addr[0], addr[1]
    if family == socket.AF_INET6:
        if "." in host and ":" not in host:
            host = "::ffff:" + host
        return (host, port, 0, 0)
    return (host, port)


def accepted(listener: Any, conn: Any, addr: Any) -> Any:
    """The address an accepted connection reports: the target's client when the session relayed it (the
    connection is then registered with the target's view), else ``addr``. Both ways in call it: the patched
    ``accept`` and the C-level layer's (mirror_py.shim.cnet)."""
    if not listeners and not _inherited:
        return addr
    lst = _listener(listener)
    if lst is None or lst.sub is None or not isinstance(addr, tuple) or not str(addr[0]).startswith(_LOOPBACK):
        return addr
    try:
        reply = rpc.call({"op": "incoming_peer", "addr": [addr[0], addr[1]]})
    except OSError:
        return addr
    found = reply.get("ok") or {}
    if not found:
        return addr  # a local client of the app, not one of the target's
    peer, local = _view(found["peer"], listener.family), _view(found["local"], listener.family)
    real = _RAW.getsockname(conn)
    net.register(conn, net.Remote("in", peer[:2], local[:2], tuple(addr[:2]), tuple(real[:2])))
    return peer


def make_accept(orig: Callable) -> Callable:
    def accept(self):
        conn, addr = orig(self)
        return conn, accepted(self, conn, addr)

    return accept


def closed(inode: int) -> None:
    """The app closed a listener (this process's last descriptor of it): the session unsubscribes when no
    process holds the socket any more."""
    lst = None
    for fd in [fd for fd, known in listeners.items() if known.inode == inode]:
        lst = listeners.pop(fd)
    if lst is None:
        return
    _inherited.pop(lst.inode, None)
    _publish()
    if lst.sub is not None:
        try:
            rpc.call({"op": "unlisten", "inode": lst.inode})
        except OSError:
            pass


def forget_all() -> None:
    """Uninstall: this process's listeners and the inherited table are no longer the session's business."""
    listeners.clear()
    _inherited.clear()
    net.adopt = None


_load_inherited()
