"""Files that C code opens by name (libsqlite3, OpenSSL loading a CA file, libcurl) through the same decisions as
Python's ``open`` and ``os.stat``.

Each handler gets libc's original function and the C arguments, the path already a ``bytes`` (ctypes converts
it in C). A relative path, or one whose local decision :mod:`mirror_py.shim.file_rules` has cached, goes to
libc unchanged after a byte comparison and a dict lookup. A path the target serves is handled as Python's
patched functions handle it: ``open`` gets :func:`mirror_py.shim.files.remote_open`'s descriptor (a memory
file with the target's content, written back on ``close`` when it is writable), ``fopen`` that descriptor
wrapped by libc's own ``fdopen``, the stat family the target's stat written into the caller's ``struct stat``
(whose layout per machine is :data:`STAT_LAYOUTS`), ``access``, ``readlink`` and ``unlink`` the target's
answers. Whether a write-mode open is the target's is ``fs.mode``'s call, as for Python: in ``read`` mode it
stays on this machine.

``open`` and ``openat`` are variadic. On Linux x86_64 and aarch64 (SysV AMD64 and AAPCS64) a variadic integer
argument travels in the same register as a named one, so a callback declared ``(char *, int, unsigned)`` reads
the caller's mode, and passing that word back to libc is harmless when the flags need no mode. The fortified
``__open_2`` family (``-D_FORTIFY_SOURCE`` builds) has no mode at all.

Failures become what C expects: ``-1`` (``NULL`` for ``fopen``) with the errno the Python call raised.
"""

from __future__ import annotations

import ctypes
import errno
import os
import posix
import struct
from typing import Any, Callable

from . import files
from .elf import _machine as machine

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EACCESS = 0x200
_SLASH = 0x2F
_WRITES = files._WRITE_FLAGS
# An O_PATH descriptor and an unnamed O_TMPFILE file are properties of this machine's kernel: left to libc.
_KERNEL_ONLY = getattr(os, "O_PATH", 0) | (getattr(os, "O_TMPFILE", 0) & ~os.O_DIRECTORY)

#: ``struct stat`` as the kernel and glibc lay it out, per machine: (size, ((field, offset, struct code), ...)).
#: ``stat64`` is the same structure on both. Fields are named after the agent's stat list
#: (:func:`mirror_py.shim.files.stat_from_list`); times are split into seconds and nanoseconds here.
STAT_LAYOUTS: dict[str, tuple[int, tuple[tuple[str, int, str], ...]]] = {
    "x86_64": (144, (("dev", 0, "Q"), ("ino", 8, "Q"), ("nlink", 16, "Q"), ("mode", 24, "I"), ("uid", 28, "I"),
                     ("gid", 32, "I"), ("rdev", 40, "Q"), ("size", 48, "q"), ("blksize", 56, "q"),
                     ("blocks", 64, "q"), ("atime", 72, "q"), ("atime_nsec", 80, "q"), ("mtime", 88, "q"),
                     ("mtime_nsec", 96, "q"), ("ctime", 104, "q"), ("ctime_nsec", 112, "q"))),
    "aarch64": (128, (("dev", 0, "Q"), ("ino", 8, "Q"), ("mode", 16, "I"), ("nlink", 20, "I"), ("uid", 24, "I"),
                      ("gid", 28, "I"), ("rdev", 32, "Q"), ("size", 48, "q"), ("blksize", 56, "i"),
                      ("blocks", 64, "q"), ("atime", 72, "q"), ("atime_nsec", 80, "q"), ("mtime", 88, "q"),
                      ("mtime_nsec", 96, "q"), ("ctime", 104, "q"), ("ctime_nsec", 112, "q"))),
}

#: Name-resolution configuration, kept this machine's for C code whatever the rules say for Python: C code's
#: lookups are the DNS layer's to route (the getaddrinfo hooks; c-ares' packets to this machine's name servers,
#: answered by the pod's resolver with its search list). Given the pod's resolv.conf, c-ares would send its
#: queries to an address only the pod knows and skip the search list ``ares_query`` does not apply, around
#: ``network.dns``.
RESOLVER_FILES = frozenset((b"/etc/resolv.conf", b"/etc/hosts", b"/etc/nsswitch.conf", b"/etc/host.conf",
                            b"/etc/gai.conf", b"/etc/svc.conf", b"/etc/netsvc.conf"))

_FOPEN_FLAGS = {
    b"r": os.O_RDONLY, b"r+": os.O_RDWR,
    b"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, b"w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    b"a": os.O_WRONLY | os.O_CREAT | os.O_APPEND, b"a+": os.O_RDWR | os.O_CREAT | os.O_APPEND,
}

_libc = ctypes.CDLL(None, use_errno=True)
_fdopen = _libc.fdopen
_fdopen.restype, _fdopen.argtypes = ctypes.c_void_p, (ctypes.c_int, ctypes.c_char_p)
_fileno = _libc.fileno
_fileno.restype, _fileno.argtypes = ctypes.c_int, (ctypes.c_void_p,)


def stat_struct(arch: str) -> struct.Struct:
    """The packer of ``arch``'s ``struct stat``, padding included, built from :data:`STAT_LAYOUTS`."""
    size, fields = STAT_LAYOUTS[arch]
    fmt, at = "<", 0
    for _, offset, code in sorted(fields, key=lambda f: f[1]):
        fmt += f"{offset - at}x{code}" if offset > at else code
        at = offset + struct.calcsize("<" + code)
    packer = struct.Struct(fmt + (f"{size - at}x" if size > at else ""))
    assert packer.size == size, (arch, packer.size, size)
    return packer


_STAT = stat_struct(machine() if machine() in STAT_LAYOUTS else "x86_64")
_ORDER = tuple(name for name, _, _ in sorted(STAT_LAYOUTS.get(machine(), STAT_LAYOUTS["x86_64"])[1],
                                              key=lambda f: f[1]))


def pack_stat(fields: list) -> bytes:
    """The agent's stat list as this machine's ``struct stat``."""
    mode, ino, dev, nlink, uid, gid, size, atime_ns, mtime_ns, ctime_ns, blksize, blocks, rdev = fields[:13]
    values = {"dev": dev, "ino": ino, "nlink": nlink, "mode": mode, "uid": uid, "gid": gid, "rdev": rdev,
              "size": size, "blksize": blksize, "blocks": blocks}
    for name, ns in (("atime", atime_ns), ("mtime", mtime_ns), ("ctime", ctime_ns)):
        values[name], values[name + "_nsec"] = divmod(ns, 1_000_000_000)
    return _STAT.pack(*(values[name] for name in _ORDER))


# ------------------------------------------------------------------------------------------------ deciding
def _remote(path: bytes | None, write: bool, dirfd: int = AT_FDCWD) -> tuple[str, str] | None:
    """``(remote path, path as shown)`` when the target serves ``path``; None when libc should run. A path the
    rules declare not found raises FileNotFoundError, as for Python."""
    if not path:
        return None
    if path[0] != _SLASH:
        if dirfd == AT_FDCWD or not files._fds:
            return None  # relative to the working directory, which is this machine's
    elif path in RESOLVER_FILES:
        return None
    rules = files._rules[0] if files._rules else files.rules()
    if not rules.enabled:
        return None
    text = path.decode("utf-8", "surrogateescape")
    if dirfd == AT_FDCWD and files._fast_local(text, write):
        return None
    return files._remote_path(text, write, None if dirfd == AT_FDCWD else dirfd)


def _fail(exc: OSError, result: Any = -1) -> Any:
    ctypes.set_errno(exc.errno if isinstance(exc.errno, int) and exc.errno > 0 else errno.EIO)
    return result


# ------------------------------------------------------------------------------------------------ open
def _open(call: Callable[[], int], path: bytes | None, flags: int, mode: int, dirfd: int = AT_FDCWD) -> int:
    if flags & _KERNEL_ONLY:
        return call()
    try:
        remote = _remote(path, bool(flags & _WRITES), dirfd)
        if remote is None:
            return call()
        fd = files.remote_open(remote[0], flags, mode & 0o7777, remote[1])
        if not flags & os.O_CLOEXEC:
            os.set_inheritable(fd, True)  # C asked for an inheritable descriptor; Python's are not
        return fd
    except OSError as exc:
        return _fail(exc)


def open(original: Callable, path: bytes | None, flags: int, mode: int) -> int:
    return _open(lambda: original(path, flags, mode), path, flags, mode)


def open_2(original: Callable, path: bytes | None, flags: int) -> int:
    """``__open_2``/``__open64_2``: what a fortified ``open`` without a mode calls."""
    return _open(lambda: original(path, flags), path, flags, 0)


def openat(original: Callable, dirfd: int, path: bytes | None, flags: int, mode: int) -> int:
    return _open(lambda: original(dirfd, path, flags, mode), path, flags, mode, dirfd)


def openat_2(original: Callable, dirfd: int, path: bytes | None, flags: int) -> int:
    return _open(lambda: original(dirfd, path, flags), path, flags, 0, dirfd)


def fopen(original: Callable, path: bytes | None, mode: bytes | None) -> int | None:
    """The target's file as a ``FILE *``: :func:`open`'s descriptor handed to libc's ``fdopen``."""
    flags = _fopen_flags(mode)
    if flags is None:
        return original(path, mode)  # a mode libc rejects: libc says so
    try:
        remote = _remote(path, bool(flags & _WRITES))
        if remote is None:
            return original(path, mode)
        fd = files.remote_open(remote[0], flags, 0o666, remote[1])
        if not flags & os.O_CLOEXEC:
            os.set_inheritable(fd, True)  # as fopen without "e" leaves it
    except OSError as exc:
        return _fail(exc, None)
    stream = _fdopen(fd, mode)
    if not stream:
        err = ctypes.get_errno()
        entry = files._fds.get(fd)
        posix.close(fd)
        if entry is not None:
            files._forget(fd, entry)
        ctypes.set_errno(err)
        return None
    return stream


def _fopen_flags(mode: bytes | None) -> int | None:
    if not mode:
        return None
    base = mode.split(b",", 1)[0]
    flags = _FOPEN_FLAGS.get(base[:1] + (b"+" if b"+" in base else b""))
    if flags is None:
        return None
    if b"x" in base:
        flags |= os.O_EXCL
    if b"e" in base:
        flags |= os.O_CLOEXEC
    return flags


# ------------------------------------------------------------------------------------------------ closing
def close(original: Callable, fd: int) -> int:
    """A remote file closed by C: written back first when it is writable, as Python's ``os.close`` does."""
    entry = files._entry(fd)
    if entry is None:
        return original(fd)
    try:
        files.sync(fd, entry)
    except OSError as exc:
        original(fd)
        files._forget(fd, entry)
        return _fail(exc)
    result = original(fd)
    files._forget(fd, entry)
    return result


def fclose(original: Callable, stream: int | None) -> int:
    """``fclose`` closes its descriptor inside libc, where no routed call sees it: the stream is flushed and
    closed first, then what it wrote goes to the target from the memory file's own descriptor."""
    if not files._fds or not stream:
        return original(stream)
    fd = _fileno(stream)
    entry = files._entry(fd) if fd in files._fds else None
    if entry is None:
        return original(stream)
    result = original(stream)
    err = ctypes.get_errno()
    try:
        files.sync(fd, entry)  # from the memory file's own descriptor: the app's is closed now
    except OSError as exc:
        return _fail(exc)
    finally:
        files._forget(fd, entry)
    ctypes.set_errno(err)
    return result


# ------------------------------------------------------------------------------------------------ stat family
def _stat(call: Callable[[], int], path: bytes | None, buf: int | None, follow: bool,
          dirfd: int = AT_FDCWD) -> int:
    try:
        remote = _remote(path, False, dirfd)
        if remote is None:
            return call()
        fields = files._call("stat", remote[1], path=remote[0], follow=follow)
    except OSError as exc:
        return _fail(exc)
    if not buf:
        ctypes.set_errno(errno.EFAULT)
        return -1
    data = pack_stat(fields)
    ctypes.memmove(buf, data, len(data))
    return 0


def stat(original: Callable, path: bytes | None, buf: int | None) -> int:
    return _stat(lambda: original(path, buf), path, buf, True)


def lstat(original: Callable, path: bytes | None, buf: int | None) -> int:
    return _stat(lambda: original(path, buf), path, buf, False)


def xstat(original: Callable, ver: int, path: bytes | None, buf: int | None) -> int:
    """``__xstat``: the pre-2.33 glibc entry point that older builds still call."""
    return _stat(lambda: original(ver, path, buf), path, buf, True)


def lxstat(original: Callable, ver: int, path: bytes | None, buf: int | None) -> int:
    return _stat(lambda: original(ver, path, buf), path, buf, False)


def fstatat(original: Callable, dirfd: int, path: bytes | None, buf: int | None, flags: int) -> int:
    return _stat(lambda: original(dirfd, path, buf, flags), path, buf, not flags & AT_SYMLINK_NOFOLLOW, dirfd)


def fxstatat(original: Callable, ver: int, dirfd: int, path: bytes | None, buf: int | None, flags: int) -> int:
    return _stat(lambda: original(ver, dirfd, path, buf, flags), path, buf, not flags & AT_SYMLINK_NOFOLLOW,
                 dirfd)


def _fstat(call: Callable[[], int], fd: int, buf: int | None) -> int:
    """A descriptor that stands for a target's file reports the target's stat, as ``os.fstat`` does: libsqlite3
    compares the inode of ``stat(path)`` with its descriptor's before it writes, and would take a mismatch for
    a database moved away (and refuse to write)."""
    if not files._fds or fd not in files._fds:
        return call()
    entry = files._entry(fd)
    if entry is None or not buf:
        return call()
    try:
        data = pack_stat(files.fd_stat_fields(fd, entry))
    except OSError as exc:
        return _fail(exc)
    ctypes.memmove(buf, data, len(data))
    return 0


def fstat(original: Callable, fd: int, buf: int | None) -> int:
    return _fstat(lambda: original(fd, buf), fd, buf)


def fxstat(original: Callable, ver: int, fd: int, buf: int | None) -> int:
    return _fstat(lambda: original(ver, fd, buf), fd, buf)


# ------------------------------------------------------------------------------------------------ the rest
def _access(call: Callable[[], int], path: bytes | None, mode: int, follow: bool, dirfd: int = AT_FDCWD,
            effective: bool = False) -> int:
    try:
        remote = _remote(path, False, dirfd)
        if remote is None:
            return call()
        rpath, shown = remote
        if files._call("access", shown, path=rpath, mode=int(mode), effective_ids=effective, follow=follow):
            return 0
        # The agent answers yes or no; C wants to know why: a second question only on this failing path.
        missing = mode == os.F_OK or not files._call("access", shown, path=rpath, mode=os.F_OK,
                                                     effective_ids=effective, follow=follow)
        ctypes.set_errno(errno.ENOENT if missing else errno.EACCES)
        return -1
    except OSError as exc:
        return _fail(exc)


def access(original: Callable, path: bytes | None, mode: int) -> int:
    return _access(lambda: original(path, mode), path, mode, True)


def faccessat(original: Callable, dirfd: int, path: bytes | None, mode: int, flags: int) -> int:
    return _access(lambda: original(dirfd, path, mode, flags), path, mode, not flags & AT_SYMLINK_NOFOLLOW, dirfd,
                   bool(flags & AT_EACCESS))


def readlink(original: Callable, path: bytes | None, buf: int | None, size: int) -> int:
    """libsqlite3 resolves the symbolic links of a database path itself (lstat, then readlink)."""
    try:
        remote = _remote(path, False)
        if remote is None:
            return original(path, buf, size)
        target = os.fsencode(files._call("readlink", remote[1], path=remote[0]))
    except OSError as exc:
        return _fail(exc)
    count = min(len(target), size)
    if count and buf:
        ctypes.memmove(buf, target, count)
    return count


def unlink(original: Callable, path: bytes | None) -> int:
    """A write: a journal libsqlite3 made in the target (``fs.mode = "write"``) is deleted there."""
    try:
        remote = _remote(path, True)
        if remote is None:
            return original(path)
        files._call("unlink", remote[1], path=remote[0])
    except OSError as exc:
        return _fail(exc)
    return 0
