"""Sockets of C code (libpq, libuv, grpc's core, libcurl) through the same decisions as Python's.

Each handler gets libc's original function and the C arguments. A call that concerns no address mirror-py
routes goes to libc unchanged, before any Python object is made. Otherwise the descriptor is wrapped in a
``socket.socket`` for the duration of the call (and detached after, so C keeps its descriptor) and the very
functions behind the patched methods decide: :func:`mirror_py.shim.net.route_connect`, the incoming module's
``bind``/``listen``, the registry's remote view for ``getpeername``/``getsockname``. The socket's blocking mode
is the descriptor's. A non-blocking connect (libpq, libuv, libcurl) waits for the target's connect (one round
trip) and then returns ``EINPROGRESS`` with the descriptor connecting to its relay on loopback: the deferred
way of Python's sockets (nbconnect.py) moves the socket while it is in flight, and C code reads such a socket
before it is writable (psycopg 3 polls libpq at once; libpq then sends), which would show it the move.

Failures become what C expects: ``-1`` with the errno the Python call raised.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
from typing import Any, Callable

from . import csockaddr, files, incoming, net

_RAW_CONNECT = socket.socket.__mro__[1].connect  # the C type's own: connects the app's socket to a relay
_RAW_GETPEERNAME = socket.socket.__mro__[1].getpeername


def _socket_of(fd: int) -> socket.socket:
    blocking = os.get_blocking(fd)
    sock = socket.socket(fileno=fd)
    try:
        sock.settimeout(None if blocking else 0.0)  # also undoes socket.setdefaulttimeout()'s change of mode
    except BaseException:
        sock.detach()
        raise
    return sock


def _fail(exc: OSError) -> int:
    ctypes.set_errno(exc.errno or errno.EIO)
    return -1


def connect(original: Callable, fd: int, addr: int | None, length: int) -> int:
    address = csockaddr.read(addr, length)
    if address is None:
        return original(fd, addr, length)

    def local(sock: Any, address: Any) -> None:
        if original(fd, addr, length) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    try:
        sock = _socket_of(fd)
    except OSError:
        return original(fd, addr, length)  # not a socket Python can wrap: libc says what it is
    try:
        net.route_connect(sock, address, _RAW_CONNECT, local, defer=False)
    except OSError as exc:
        return _fail(exc)
    finally:
        sock.detach()
    return 0


def bind(original: Callable, fd: int, addr: int | None, length: int) -> int:
    address = csockaddr.read(addr, length)
    if address is None or incoming.remote_port(address[1]) is None:
        return original(fd, addr, length)
    sock = _socket_of(fd)
    try:
        sock.bind(address)  # the patched bind: registers the listener the target's traffic will reach
    except OSError as exc:
        return _fail(exc)
    finally:
        sock.detach()
    return 0


def listen(original: Callable, fd: int, backlog: int) -> int:
    if not incoming.listeners and not incoming._inherited:
        return original(fd, backlog)
    sock = _socket_of(fd)
    try:
        sock.listen(backlog)  # the patched listen: subscribes to the target's port
    except OSError as exc:
        return _fail(exc)
    finally:
        sock.detach()
    return 0


def accept(original: Callable, fd: int, addr: int | None, length_p: int | None) -> int:
    return _accepted(original(fd, addr, length_p), fd, addr, length_p)


def accept4(original: Callable, fd: int, addr: int | None, length_p: int | None, flags: int) -> int:
    return _accepted(original(fd, addr, length_p, flags), fd, addr, length_p)


def _accepted(conn_fd: int, fd: int, addr: int | None, length_p: int | None) -> int:
    """A connection a C server accepted on a listener that gets the target's traffic: registered with the
    target's client as its peer (incoming.accepted), which ``getpeername`` then reports."""
    if conn_fd < 0 or (not incoming.listeners and not incoming._inherited):
        return conn_fd
    saved = ctypes.get_errno()
    listener = _socket_of(fd)
    try:
        conn = socket.socket(fileno=conn_fd)
        try:
            real = _RAW_GETPEERNAME(conn)
            peer = incoming.accepted(listener, conn, real)
        finally:
            conn.detach()
    except OSError:
        peer = None  # the connection stays as the kernel gave it
    finally:
        listener.detach()
    if peer is not None and peer != real and addr and length_p:
        csockaddr.write(csockaddr.pack(int(listener.family), peer), addr, length_p)
    ctypes.set_errno(saved)
    return conn_fd


def _known(fd: int) -> bool:
    if net.adopt is not None:
        return True
    return bool(net.registry) and net._inode(fd) in net.registry


def _name(original: Callable, fd: int, addr: int, length_p: int, peer: bool) -> int:
    if not _known(fd) or not addr or not length_p:
        return original(fd, addr, length_p)
    sock = _socket_of(fd)
    try:
        view = sock.getpeername() if peer else sock.getsockname()
        family = sock.family
    except OSError as exc:
        return _fail(exc)
    finally:
        sock.detach()
    csockaddr.write(csockaddr.pack(int(family), view), addr, length_p)
    return 0


def getpeername(original: Callable, fd: int, addr: int, length_p: int) -> int:
    return _name(original, fd, addr, length_p, True)


def getsockname(original: Callable, fd: int, addr: int, length_p: int) -> int:
    return _name(original, fd, addr, length_p, False)


def recvfrom(original: Callable, fd: int, buf: int, size: int, flags: int, addr: int | None,
             length_p: int | None) -> int:
    """A datagram on a connected routed UDP socket comes from its relay on loopback: the source reported is the
    address the socket connected to, as it would be without mirror-py. c-ares drops an answer whose source is
    not the name server it asked (an anti-spoofing check), so its lookups depend on this."""
    got = original(fd, buf, size, flags, addr, length_p)
    if got < 0 or not addr or not length_p or not net.registry:
        return got
    saved = ctypes.get_errno()
    info = net.registry.get(net._inode(fd))
    if info is not None and info.kind == "udp" and not info.prefixed and info.peer is not None:
        room = ctypes.c_uint32.from_address(length_p).value
        source = csockaddr.read(addr, room)
        if source is not None and (source[0], source[1]) == tuple(info.relay[:2]):
            family = ctypes.c_uint16.from_address(addr).value
            csockaddr.write(csockaddr.pack(family, net._view(info.peer, family)), addr, length_p)
    ctypes.set_errno(saved)
    return got


def close(original: Callable, fd: int) -> int:
    """A routed socket closed by C: the same release as Python's close (its registry entry, the session's
    state for a connect in flight or a listener). A remote file's descriptor is written back first
    (cfiles.close)."""
    if fd in files._fds:
        from . import cfiles

        return cfiles.close(original, fd)
    if not net.registry or net._inode(fd) not in net.registry:
        return original(fd)
    sock = socket.socket(fileno=fd)
    try:
        sock.close()
    except OSError as exc:
        return _fail(exc)
    return 0
