"""The target's files through the ordinary Python file APIs.

Every patched function first asks :mod:`.file_rules` whether its path is the target's; the local answer is
cached per path, so the cost of the hook on ``builtins.open`` and ``os.stat`` is a dict lookup and a call.

A remote file is a real fd: opening one fetches its content from the agent into an anonymous memory file
(``memfd_create``), re-opened with the access the app asked for, so ``mmap``, ``select``, ``os.read``, C code
reading the fd, and small reads all work without a round trip. ``os.fstat`` of such an fd reports the
target's stat. In write mode the content goes back to the target when the file is flushed or closed (an
append sends only what was appended), and creating, truncating and ``O_EXCL`` happen in the target at open
time, so the errors are the target's. A remote directory opened with ``os.open`` is a placeholder fd that
the ``dir_fd=`` arguments and ``os.scandir(fd)`` understand, so fd-based walkers such as ``shutil.rmtree``
work too.

Paths the rules keep local go straight to the original functions. The internal calls here use the ``posix``
module directly, never the patched ``os`` names.
"""

from __future__ import annotations

import _thread
import errno as _errno
import io
import os
import posix
import stat as _stat
from typing import Any, Callable

from . import file_rules, scope
from .file_rules import LOCAL, NOT_FOUND, REMOTE

_ACC = os.O_ACCMODE
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_RPC_BYTES = 16 << 20
_rules: list[file_rules.FileRules] = []
_rules_lock = _thread.RLock()
_building: list[bool] = []
_ALL_LOCAL = file_rules.FileRules({"mode": "local"}, local_dirs=())
_FILEIO = io.FileIO  # the C type, taken before io.FileIO is patched: the shim's own reads never decide
_LOCAL_BOTH = (LOCAL, LOCAL)


# ------------------------------------------------------------------------------------------------- rules
def rules() -> file_rules.FileRules:
    if _rules:
        return _rules[0]
    from . import settings

    with _rules_lock:
        if not _rules:
            if _building:
                return _ALL_LOCAL  # building the rules stats paths itself (realpath): those are local
            _building.append(True)
            try:
                _rules.append(file_rules.FileRules(settings.get().fs))
            finally:
                _building.clear()
    return _rules[0]


def reset() -> None:
    """Forget the rules (tests, and a session whose settings change)."""
    _rules.clear()


_guard = _thread._local()


def _decide(path: str, write: bool) -> tuple[int, str]:
    # The cached local answer never gets here (the fast paths take it), so a local block costs nothing there.
    if scope.is_local() or getattr(_guard, "local", False):
        return LOCAL, path  # inside a local realpath: every component it looks at is local too
    r = _rules[0] if _rules else rules()
    entry = r.lookup(path)
    return (entry[1] if write else entry[0]), entry[2]


def _text(path: Any) -> tuple[str | None, Any]:
    """``(str path or None when not a path, the fspath value)``; ints (fds) and None give None."""
    cls = path.__class__
    if cls is str:
        return path, path
    if cls is int or path is None:
        return None, path
    if cls is bytes:
        return os.fsdecode(path), path
    try:
        value = os.fspath(path)
    except TypeError:
        return None, path
    if isinstance(value, bytes):
        return os.fsdecode(value), value
    return value, value


def _not_found(shown: Any) -> OSError:
    return FileNotFoundError(_errno.ENOENT, os.strerror(_errno.ENOENT), shown)


def _raise(err: dict, shown: Any, shown2: Any = None) -> OSError:
    from . import errors

    exc = errors.to_exception(err)
    num = exc.errno
    if isinstance(num, int) and num:
        # The target's file errors read like local ones; a reset is the session losing its agent, and its
        # message (which agent, why) is what the user needs to see.
        text = exc.strerror if num == _errno.ECONNRESET and exc.strerror else os.strerror(num)
        if shown2 is not None:
            return OSError(num, text, shown, None, shown2)
        return OSError(num, text, shown)
    return exc


def _call(fn: str, shown: Any = None, shown2: Any = None, data: bytes | None = None, **args: Any) -> Any:
    from . import rpc

    reply = rpc.call({"op": "fs", "fn": fn, **args}, data)
    if "err" in reply:
        raise _raise(reply["err"], shown, shown2)
    if "data" in reply:
        return reply["ok"], reply["data"]
    return reply["ok"]


def _umask() -> int:
    """The app's umask, applied by the agent to what it creates (read without changing it)."""
    try:
        with _FILEIO("/proc/self/status", "r") as f:
            for line in f.read().decode().splitlines():
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


# ------------------------------------------------------------------------------------------------- stats
def stat_from_list(fields: list) -> os.stat_result:
    """An ``os.stat_result`` from the agent's list, with float times computed as CPython computes them."""
    mode, ino, dev, nlink, uid, gid, size, atime_ns, mtime_ns, ctime_ns, blksize, blocks, rdev = fields[:13]

    def seconds(ns: int) -> float:
        sec, nsec = divmod(ns, 1_000_000_000)
        return sec + nsec * 1e-9

    return os.stat_result(
        (mode, ino, dev, nlink, uid, gid, size, atime_ns // 1_000_000_000, mtime_ns // 1_000_000_000,
         ctime_ns // 1_000_000_000),
        {"st_atime": seconds(atime_ns), "st_mtime": seconds(mtime_ns), "st_ctime": seconds(ctime_ns),
         "st_atime_ns": atime_ns, "st_mtime_ns": mtime_ns, "st_ctime_ns": ctime_ns,
         "st_blksize": blksize, "st_blocks": blocks, "st_rdev": rdev},
    )


# ---------------------------------------------------------------------------------------- remote fds
class _Remote:
    """An fd of the app that stands for a file or directory of the target."""

    __slots__ = ("append", "backing", "base", "changeable", "dev_ino", "dirty_mark", "handle", "is_dir", "path",
                 "st", "writable")

    def __init__(self, path: str, st: list, is_dir: bool) -> None:
        self.path = path
        self.st = st
        self.is_dir = is_dir
        self.writable = False
        self.changeable = False  # the rules send writes to this path to the target (fchmod, fchown... may act)
        self.append = False
        self.handle: int | None = None
        self.backing = -1  # a private read-write fd of the memory file (writable files only)
        self.base = 0  # bytes already in the target (appends send what follows)
        self.dev_ino: tuple[int, int] = (0, 0)
        self.dirty_mark: tuple[int, int] | None = None


_fds: dict[int, _Remote] = {}
_fds_lock = _thread.allocate_lock()


def _entry(fd: Any) -> _Remote | None:
    """The live remote entry of ``fd``; an fd closed behind our back (by C code) and reused is forgotten."""
    entry = _fds.get(fd)
    if entry is None:
        return None
    try:
        st = posix.fstat(fd)
    except OSError:
        st = None
    if st is None or (st.st_dev, st.st_ino) != entry.dev_ino:
        _forget(fd, entry)
        return None
    return entry


def _release(entry: _Remote) -> None:
    if entry.backing >= 0:
        try:
            posix.close(entry.backing)
        except OSError:
            pass
        entry.backing = -1
    if entry.handle is not None:
        handle, entry.handle = entry.handle, None
        try:
            _call("close", h=handle)
        except OSError:
            pass


def _write_all(fd: int, data: Any, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += posix.pwrite(fd, view[done:], offset + done)


def _fetch_into(memfd: int, path: str, shown: Any, reply: dict, data: bytes, keep: bool) -> None:
    """Writes the first chunk and then the rest of the file (16 MiB per round trip) into ``memfd``."""
    _write_all(memfd, data, 0)
    offset = len(data)
    eof = reply.get("eof", True)
    handle = reply.get("h")
    while not eof and handle is not None:
        meta, chunk = _call("read", shown, h=handle, off=offset, size=_RPC_BYTES, close_at_eof=not keep)
        _write_all(memfd, chunk, offset)
        offset += len(chunk)
        eof = meta["eof"]


def _reopen(memfd: int, flags: int) -> int:
    """The app's own fd on the memory file, with exactly the access it asked for (a read-only open gets a
    read-only fd: writes fail with EBADF as they would on the real file)."""
    want = (flags & (_ACC | os.O_APPEND)) | os.O_CLOEXEC
    try:
        return posix.open(f"/proc/self/fd/{memfd}", want)
    except OSError:
        return posix.dup(memfd)  # no /proc: the read-write fd itself


def remote_open(path: str, flags: int, mode: int, shown: Any, *, for_fileio: bool = False) -> int:
    """Opens ``path`` in the target and returns a real local fd holding its content."""
    acc = flags & _ACC
    writable = acc != os.O_RDONLY
    append = bool(flags & os.O_APPEND)
    fetch = not (flags & os.O_TRUNC) and not (acc == os.O_WRONLY and append)
    agent_flags = flags & ~os.O_CLOEXEC
    if fetch and acc == os.O_WRONLY:
        agent_flags = (agent_flags & ~_ACC) | os.O_RDWR  # the content is needed to write it back whole
    reply, data = _call("open", shown, path=path, flags=agent_flags, mode=mode, umask=_umask(), fetch=fetch,
                        keep=writable)
    if reply["dir"] and for_fileio:
        if reply.get("h") is not None:
            _call("close", h=reply["h"])
        raise IsADirectoryError(_errno.EISDIR, os.strerror(_errno.EISDIR), shown)
    entry = _Remote(path, reply["st"], reply["dir"])
    name = "mirror-py:" + path.rsplit("/", 1)[-1][:200]
    memfd = posix.memfd_create(name, os.MFD_CLOEXEC)
    try:
        _fetch_into(memfd, path, shown, reply, data, writable)
        if not fetch and append:
            posix.ftruncate(memfd, reply["st"][6])  # sparse: only what the app appends is sent back
        fd = _reopen(memfd, flags)
    except BaseException:
        posix.close(memfd)
        if reply.get("h") is not None and writable:
            _call("close", h=reply["h"])
        raise
    st = posix.fstat(fd)
    entry.dev_ino = (st.st_dev, st.st_ino)
    entry.changeable = writable or rules().writes_remote(path)
    if writable:
        entry.writable = True
        entry.append = append
        entry.handle = reply.get("h")
        entry.backing = memfd
        entry.base = reply["st"][6] if append else 0
        entry.dirty_mark = _mark(memfd)
    else:
        posix.close(memfd)
    with _fds_lock:
        _fds[fd] = entry
    return fd


def _mark(fd: int) -> tuple[int, int]:
    st = posix.fstat(fd)
    return (st.st_size, st.st_mtime_ns)


def sync(fd: int, entry: _Remote, force: bool = False) -> None:
    """Sends what the app wrote to the target: the whole content, or only the appended tail."""
    if not entry.writable or entry.handle is None or entry.backing < 0:
        return
    mark = _mark(entry.backing)
    if not force and mark == entry.dirty_mark:
        return
    size = mark[0]
    start = entry.base if entry.append else 0
    pos = start
    while pos < size:
        chunk = posix.pread(entry.backing, min(_RPC_BYTES, size - pos), pos)
        if not chunk:
            break
        _call("write", entry.path, data=chunk, h=entry.handle, off=None if entry.append else pos)
        pos += len(chunk)
    if entry.append:
        entry.base = pos
    else:
        _call("ftruncate", entry.path, h=entry.handle, size=size)
    entry.dirty_mark = mark


def _forget(fd: int, entry: _Remote) -> None:
    """The descriptor no longer stands for the remote file (unless it was already reused for another)."""
    with _fds_lock:
        if _fds.get(fd) is entry:
            del _fds[fd]
    _release(entry)


def _close_entry(fd: int, entry: _Remote) -> None:
    try:
        sync(fd, entry)
    finally:
        _forget(fd, entry)


# ---------------------------------------------------------------------------------- open() and FileIO
class _WriteBack:
    """What makes a raw file write a remote file back: closing (and flushing) sends the content to the
    target. A no-op on an ordinary fd."""

    def _sync(self) -> None:
        if not self.closed:
            entry = _entry(self.fileno())
            if entry is not None:
                sync(self.fileno(), entry, force=getattr(self, "_mp_dirty", False))
                self._mp_dirty = False

    def write(self, b: Any) -> Any:
        self._mp_dirty = True
        return super().write(b)

    def truncate(self, size: Any = None) -> Any:
        self._mp_dirty = True
        return super().truncate(size)

    def flush(self) -> None:
        super().flush()
        self._sync()

    def close(self) -> None:
        if self.closed:
            return
        fd = self.fileno() if self.closefd else -1
        try:
            self._sync()
        finally:
            entry = _fds.get(fd) if fd >= 0 else None
            super().close()
            if entry is not None:
                _forget(fd, entry)


class RemoteFileIO(_WriteBack, io.FileIO):
    """The raw file of a writable remote file."""


# Every layer of every writable remote file the app holds (text, buffer, raw), so that flush_all() can push
# what still sits in Python's buffers; weak, so that tracking never keeps a file open. Made at the first
# writable remote open: weakref is not imported at start-up.
_writers: list[Any] = []


def _track(layer: Any) -> None:
    if not _writers:
        import weakref

        _writers.append(weakref.WeakSet())
    _writers[0].add(layer)


def flush_all() -> list[tuple[Any, BaseException]]:
    """Writes every writable remote file back to the target: the app's Python buffers (outermost layer first,
    as ``flush()`` would), then what ``os.write`` put into memory files. Returns ``(name, error)`` for each
    file that could not be written back; the others are written whatever happened to one."""
    failures: list[tuple[Any, BaseException]] = []
    layers = sorted(_writers[0] if _writers else (), key=lambda f: 0 if isinstance(f, io.TextIOBase) else
                    1 if isinstance(f, io.BufferedIOBase) else 2)
    for layer in layers:
        try:
            if not layer.closed:
                layer.flush()
        except Exception as exc:  # reported to the caller with the file's name
            failures.append((getattr(layer, "name", "?"), exc))
    with _fds_lock:
        entries = list(_fds.items())
    for fd, entry in entries:
        if entry.writable and _entry(fd) is entry:
            try:
                sync(fd, entry)
            except Exception as exc:
                failures.append((entry.path, exc))
    return failures


class _SyncOnFlush:
    """A buffer whose flush() also writes the remote file back, as flush() on a local file reaches the disk."""

    def flush(self) -> None:
        super().flush()  # type: ignore[misc]
        sync_raw = getattr(self.raw, "_sync", None)  # type: ignore[attr-defined]
        if sync_raw is not None:
            sync_raw()


class _SyncingWriter(_SyncOnFlush, io.BufferedWriter):
    pass


class _SyncingRandom(_SyncOnFlush, io.BufferedRandom):
    pass


def _open_stack(file: Any, mode: str, buffering: int, encoding: Any, errors_: Any, newline: Any, closefd: bool,
                opener: Any) -> Any:
    """``io.open`` itself, with a raw file that writes back: the same checks, buffers and text layer."""
    if not isinstance(mode, str):
        raise TypeError(f"open() argument 'mode' must be str, not {type(mode).__name__}")
    modes = set(mode)
    if modes - set("axrwb+t") or len(mode) > len(modes):
        raise ValueError(f"invalid mode: '{mode}'")
    creating, reading, writing, appending = "x" in modes, "r" in modes, "w" in modes, "a" in modes
    updating, text, binary = "+" in modes, "t" in modes, "b" in modes
    if text and binary:
        raise ValueError("can't have text and binary mode at once")
    if creating + reading + writing + appending != 1:
        raise ValueError("must have exactly one of create/read/write/append mode")
    if binary and encoding is not None:
        raise ValueError("binary mode doesn't take an encoding argument")
    if binary and errors_ is not None:
        raise ValueError("binary mode doesn't take an errors argument")
    if binary and newline is not None:
        raise ValueError("binary mode doesn't take a newline argument")
    if binary and buffering == 1:
        import warnings

        warnings.warn("line buffering (buffering=1) isn't supported in binary mode, the default buffer size "
                      "will be used", RuntimeWarning, 3)
    raw_mode = ("x" if creating else "") + ("r" if reading else "") + ("w" if writing else "") + \
        ("a" if appending else "") + ("+" if updating else "")
    raw = RemoteFileIO(file, raw_mode, closefd, opener=opener)
    result: Any = raw
    _track(raw)
    try:
        line_buffering = False
        if buffering == 1 or (buffering < 0 and raw.isatty()):
            buffering = -1
            line_buffering = True
        if buffering < 0:
            buffering = getattr(raw, "_blksize", 0) or io.DEFAULT_BUFFER_SIZE
            if buffering <= 1:
                buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            if binary:
                return result
            raise ValueError("can't have unbuffered text I/O")
        buffer = _SyncingRandom(raw, buffering) if updating else _SyncingWriter(raw, buffering)
        result = buffer
        _track(buffer)  # what the app writes sits in this buffer until flushed: flush_all() must see it
        if binary:
            return result
        text_encoding = getattr(io, "text_encoding", None)
        if text_encoding is not None:
            encoding = text_encoding(encoding)
        wrapper = io.TextIOWrapper(buffer, encoding, errors_, newline, line_buffering)
        result = wrapper
        _track(wrapper)
        wrapper.mode = mode  # type: ignore[misc]
        return result
    except BaseException:
        result.close()
        raise


def _mode_writes(mode: Any) -> bool:
    return isinstance(mode, str) and ("w" in mode or "a" in mode or "x" in mode or "+" in mode)


def make_open(orig: Callable) -> Callable:
    def open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True, opener=None):
        if file.__class__ is str:
            cache = _rules[0]._cache if _rules else None
            entry = cache.get(file) if cache is not None else None
            if entry is not None and entry[0] == LOCAL and entry[1] == LOCAL:
                return orig(file, mode, buffering, encoding, errors, newline, closefd, opener)
        return _open_slow(orig, file, mode, buffering, encoding, errors, newline, closefd, opener)

    return open


class _FileIOType(type):
    """The metaclass of the patched ``io.FileIO``: every raw file ``open()`` returns is the C type's, and
    ``isinstance(f, io.FileIO)`` must stay true of them, as ``issubclass`` of the C type's subclasses."""

    _stands_for: type

    def __instancecheck__(cls, obj: Any) -> bool:
        if "_stands_for" in cls.__dict__:
            return isinstance(obj, cls._stands_for)
        return super().__instancecheck__(obj)

    def __subclasscheck__(cls, sub: Any) -> bool:
        if "_stands_for" in cls.__dict__:
            return issubclass(sub, cls._stands_for)
        return super().__subclasscheck__(sub)


def make_fileio(orig: Callable) -> Callable:
    """``io.FileIO(path)`` opens in C without ``open()``: the class is replaced by a subclass whose calls
    decide like ``open()``, and that return the very object the original gives (a C ``FileIO``, or one that
    writes back for a writable file of the target). Subclasses defined while the shim is installed write back
    too."""

    class FileIO(_WriteBack, orig, metaclass=_FileIOType):  # type: ignore[misc, valid-type]
        _stands_for = orig

        def __new__(cls, file, mode="r", closefd=True, opener=None):
            if cls is FileIO:
                return _fileio(orig, file, mode, closefd, opener)
            return orig.__new__(cls, file, mode, closefd, opener)

        def __init__(self, file, mode="r", closefd=True, opener=None):
            if opener is None and file.__class__ is not int:
                opener = _remote_opener(file, mode)
            super().__init__(file, mode, closefd, opener)

    FileIO.__qualname__ = "FileIO"
    FileIO.__module__ = getattr(orig, "__module__", "io")
    return FileIO


def _remote_opener(file: Any, mode: Any) -> Callable | None:
    """The opener that opens ``file`` in the target, None when it is the laptop's (NOT_FOUND raises)."""
    text, shown = _text(file)
    if text is None or not settings_enabled():
        return None
    decision, path = _decide(text, _mode_writes(mode))
    if decision == LOCAL:
        return None
    if decision == NOT_FOUND:
        raise _not_found(shown)

    def opener(_name: Any, flags: int) -> int:
        return remote_open(path, flags, 0o666, shown, for_fileio=True)

    return opener


def _fileio(orig: Callable, file: Any, mode: Any, closefd: Any, opener: Any) -> Any:
    """What ``io.FileIO(...)`` gives: the original's object, on the target's file when the rules say so."""
    if file.__class__ is int:
        entry = _entry(file) if _fds else None
        if entry is not None and entry.writable and closefd and _mode_writes(mode):
            return RemoteFileIO(file, mode, closefd, opener)
        return orig(file, mode, closefd, opener)
    remote = _remote_opener(file, mode)
    if remote is None:
        return orig(file, mode, closefd, opener)
    # The app's own opener (which reaches the patched os.open) is kept, as open() keeps it.
    if _mode_writes(mode):
        return RemoteFileIO(file, mode, closefd, opener or remote)
    return orig(file, mode, closefd, opener or remote)


def _open_slow(orig: Callable, file: Any, mode: Any, buffering: Any, encoding: Any, errors_: Any, newline: Any,
               closefd: Any, opener: Any) -> Any:
    if file.__class__ is int:
        entry = _entry(file) if _fds else None
        if entry is not None and entry.writable and closefd and _mode_writes(mode):
            return _open_stack(file, mode, buffering, encoding, errors_, newline, closefd, opener)
        return orig(file, mode, buffering, encoding, errors_, newline, closefd, opener)
    text, shown = _text(file)
    if text is None or not settings_enabled():
        return orig(file, mode, buffering, encoding, errors_, newline, closefd, opener)
    write = _mode_writes(mode)
    decision, path = _decide(text, write)
    if decision == LOCAL:
        return orig(file, mode, buffering, encoding, errors_, newline, closefd, opener)
    if decision == NOT_FOUND:
        raise _not_found(shown)
    if opener is None:
        def opener(_name: Any, flags: int) -> int:
            return remote_open(path, flags, 0o666, shown, for_fileio=True)
    if write:
        return _open_stack(file, mode, buffering, encoding, errors_, newline, closefd, opener)
    return orig(file, mode, buffering, encoding, errors_, newline, closefd, opener)


def settings_enabled() -> bool:
    return rules().enabled


# ------------------------------------------------------------------------------- path-taking functions
def _remote_dir_path(dir_fd: Any) -> str | None:
    if dir_fd is None or not _fds:
        return None
    entry = _entry(dir_fd)
    if entry is None or not entry.is_dir:
        return None
    return entry.path


def _route(path: Any, write: bool, dir_fd: Any = None) -> tuple[int, str, Any]:
    """``(decision, remote path, shown)``; decision LOCAL means: call the original."""
    text, shown = _text(path)
    if text is None:
        return LOCAL, "", shown
    if dir_fd is not None and not text.startswith("/"):
        base = _remote_dir_path(dir_fd)
        if base is None:
            return LOCAL, "", shown
        return REMOTE, base.rstrip("/") + "/" + text, shown
    decision, mapped = _decide(text, write)
    return decision, mapped, shown


def _remote_path(path: Any, write: bool, dir_fd: Any = None) -> tuple[str, Any] | None:
    """``(remote path, shown)`` when the target serves ``path``; None when the original call should run. A path
    the rules declare not found raises FileNotFoundError here, so no wrapper can forget it."""
    decision, rpath, shown = _route(path, write, dir_fd)
    if decision == LOCAL:
        return None
    if decision == NOT_FOUND:
        raise _not_found(shown)
    return rpath, shown


def _fast_local(path: Any, write: bool) -> bool:
    """The hot path: a str path whose decision is cached as local."""
    if path.__class__ is str and _rules:
        entry = _rules[0]._cache.get(path)
        if entry is not None:
            return (entry[1] if write else entry[0]) == LOCAL
    return False


def make_stat(orig: Callable) -> Callable:
    def stat(path, *, dir_fd=None, follow_symlinks=True):
        if dir_fd is None and _fast_local(path, False):
            return orig(path, follow_symlinks=follow_symlinks)
        if path.__class__ is int:
            entry = _entry(path) if _fds else None
            if entry is not None:
                return _fd_stat(path, entry)
            return orig(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
        remote = _remote_path(path, False, dir_fd)
        if remote is None:
            return orig(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
        rpath, shown = remote
        return stat_from_list(_call("stat", shown, path=rpath, follow=bool(follow_symlinks)))

    return stat


def make_lstat(orig: Callable) -> Callable:
    def lstat(path, *, dir_fd=None):
        if dir_fd is None and _fast_local(path, False):
            return orig(path)
        remote = _remote_path(path, False, dir_fd)
        if remote is None:
            return orig(path, dir_fd=dir_fd)
        rpath, shown = remote
        return stat_from_list(_call("stat", shown, path=rpath, follow=False))

    return lstat


def fd_stat_fields(fd: int, entry: _Remote) -> list:
    """The target's stat of a remote fd, with the size the app's writes have given it so far (the agent's
    list layout; C code gets it packed by cfiles.py)."""
    fields = list(entry.st)
    if entry.writable:
        local = posix.fstat(fd)
        fields[6] = local.st_size
    return fields


def _fd_stat(fd: int, entry: _Remote) -> os.stat_result:
    return stat_from_list(fd_stat_fields(fd, entry))


def make_fstat(orig: Callable) -> Callable:
    def fstat(fd):
        if _fds:
            entry = _entry(fd)
            if entry is not None:
                return _fd_stat(fd, entry)
        return orig(fd)

    return fstat


def make_access(orig: Callable) -> Callable:
    def access(path, mode, *, dir_fd=None, effective_ids=False, follow_symlinks=True):
        if dir_fd is None and _fast_local(path, False):
            return orig(path, mode, effective_ids=effective_ids, follow_symlinks=follow_symlinks)
        decision, rpath, shown = _route(path, False, dir_fd)
        if decision == LOCAL:
            return orig(path, mode, dir_fd=dir_fd, effective_ids=effective_ids, follow_symlinks=follow_symlinks)
        if decision == NOT_FOUND:
            return False
        try:
            return bool(_call("access", shown, path=rpath, mode=int(mode), effective_ids=bool(effective_ids),
                              follow=bool(follow_symlinks)))
        except OSError:
            return False

    return access


def _names(names: list, as_bytes: bool) -> list:
    return [os.fsencode(n) for n in names] if as_bytes else list(names)


def make_listdir(orig: Callable) -> Callable:
    def listdir(path=None):
        if path is None or _fast_local(path, False):
            return orig(path) if path is not None else orig()
        if path.__class__ is int:
            entry = _entry(path) if _fds else None
            if entry is None:
                return orig(path)
            return list(_call("listdir", path, path=entry.path))
        remote = _remote_path(path, False)
        if remote is None:
            return orig(path)
        rpath, shown = remote
        return _names(_call("listdir", shown, path=rpath), isinstance(shown, bytes))

    return listdir


class RemoteDirEntry(os.PathLike):
    """What ``os.scandir`` yields for a directory of the target (``os.DirEntry`` cannot be created)."""

    __slots__ = ("_ino", "_kind", "_lstat", "_target", "name", "path")

    def __init__(self, directory: Any, name: str, kind: str, lstat: list | None, target: Any, ino: int,
                 as_bytes: bool, fd_based: bool) -> None:
        self._ino = ino
        self.name: Any = os.fsencode(name) if as_bytes else name
        if fd_based:
            self.path: Any = self.name
        elif as_bytes:
            self.path = directory + (self.name if directory.endswith(b"/") else b"/" + self.name)
        else:
            self.path = directory + (self.name if directory.endswith("/") else "/" + self.name)
        self._kind = kind
        self._lstat = lstat
        self._target = target

    def __fspath__(self) -> Any:
        return self.path

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"

    def inode(self) -> int:
        return self._ino

    def is_symlink(self) -> bool:
        return self._kind == "l"

    def is_junction(self) -> bool:
        return False

    def _followed(self) -> list | None:
        """The target's stat; a missing target is "not a dir, not a file", any other error is raised, as
        ``os.DirEntry`` does."""
        if self._kind != "l":
            return self._lstat
        if isinstance(self._target, int) and self._target != _errno.ENOENT:
            raise OSError(self._target, os.strerror(self._target), self.path)
        return self._target if isinstance(self._target, list) else None

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        st = self._followed() if follow_symlinks else self._lstat
        return st is not None and _stat.S_ISDIR(st[0])

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        st = self._followed() if follow_symlinks else self._lstat
        return st is not None and _stat.S_ISREG(st[0])

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        try:
            st = self._followed() if follow_symlinks else self._lstat
        except OSError:
            st = None
        if st is None:
            code = self._target if isinstance(self._target, int) else _errno.ENOENT
            raise OSError(code, os.strerror(code), self.path)
        return stat_from_list(st)

    def __class_getitem__(cls, item: Any) -> Any:
        import types

        return types.GenericAlias(cls, item)


class _ScandirIterator:
    """The iterator ``os.scandir`` returns: iterable, a context manager, with ``close()``."""

    def __init__(self, entries: list) -> None:
        self._entries = iter(entries)

    def __iter__(self) -> _ScandirIterator:
        return self

    def __next__(self) -> RemoteDirEntry:
        return next(self._entries)

    def close(self) -> None:
        self._entries = iter(())

    def __enter__(self) -> _ScandirIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _scan(rpath: str, shown: Any, directory: Any, fd_based: bool) -> _ScandirIterator:
    listing = _call("scandir", shown, path=rpath)
    as_bytes = isinstance(directory, bytes)
    return _ScandirIterator([RemoteDirEntry(directory, name, kind, lst, target, ino, as_bytes, fd_based)
                             for name, kind, lst, target, ino in listing])


def make_scandir(orig: Callable) -> Callable:
    def scandir(path=None):
        if path is None or _fast_local(path, False):
            return orig(path) if path is not None else orig()
        if path.__class__ is int:
            entry = _entry(path) if _fds else None
            if entry is None:
                return orig(path)
            return _scan(entry.path, path, "", True)
        remote = _remote_path(path, False)
        if remote is None:
            return orig(path)
        rpath, shown = remote
        return _scan(rpath, shown, shown, False)

    return scandir


def make_readlink(orig: Callable) -> Callable:
    def readlink(path, *, dir_fd=None):
        if dir_fd is None and _fast_local(path, False):
            return orig(path)
        remote = _remote_path(path, False, dir_fd)
        if remote is None:
            return orig(path, dir_fd=dir_fd)
        rpath, shown = remote
        target = _call("readlink", shown, path=rpath)
        return os.fsencode(target) if isinstance(shown, bytes) else target

    return readlink


def make_realpath(orig: Callable) -> Callable:
    def realpath(filename, *args, **kwargs):
        text, shown = _text(filename)
        if text is None or not text.startswith("/"):
            _guard.local = True
            try:
                return orig(filename, *args, **kwargs)
            finally:
                _guard.local = False
        decision, rpath = _decide(text, False)
        if decision != REMOTE:
            # The original resolves one component at a time with os.lstat: keep its look-ups local too, or the
            # parents of a local path (/work of /work/app) would be looked up in the target.
            _guard.local = True
            try:
                return orig(filename, *args, **kwargs)
            finally:
                _guard.local = False
        strict = bool(kwargs.get("strict", args[0] if args else False))
        out = _call("realpath", shown, path=rpath, strict=strict)
        return os.fsencode(out) if isinstance(shown, bytes) else out

    return realpath


def make_os_open(orig: Callable) -> Callable:
    def open(path, flags, mode=0o777, *, dir_fd=None):
        if dir_fd is None and _fast_local(path, bool(flags & _WRITE_FLAGS)):
            return orig(path, flags, mode)
        remote = _remote_path(path, bool(flags & _WRITE_FLAGS), dir_fd)
        if remote is None:
            return orig(path, flags, mode, dir_fd=dir_fd)
        rpath, shown = remote
        return remote_open(rpath, int(flags), int(mode), shown)

    return open


def make_close(orig: Callable) -> Callable:
    def close(fd):
        if _fds:
            entry = _fds.get(fd)
            if entry is not None and entry.writable and _entry(fd) is entry:
                try:
                    sync(fd, entry)
                finally:
                    orig(fd)
                    _forget(fd, entry)
                return None
            if entry is not None:
                with _fds_lock:
                    if _fds.get(fd) is entry:
                        del _fds[fd]
        return orig(fd)

    return close


def make_fsync(orig: Callable) -> Callable:
    def fsync(fd):
        if _fds:
            number = fd if isinstance(fd, int) else fd.fileno()
            entry = _entry(number)
            if entry is not None and entry.writable:
                sync(number, entry, force=True)
        return orig(fd)

    return fsync


# ------------------------------------------------------------------------------------ write operations
def _by_fd(fd: int, fn: str, **args: Any) -> bool:
    from . import file_meta

    return file_meta.change_by_fd(fd, fn, **args)


def _simple_write(orig: Callable, fn: str) -> Callable:
    def op(path, *, dir_fd=None):
        if dir_fd is None and _fast_local(path, True):
            return orig(path)
        remote = _remote_path(path, True, dir_fd)
        if remote is None:
            return orig(path, dir_fd=dir_fd)
        rpath, shown = remote
        _call(fn, shown, path=rpath)
        return None

    return op


def make_unlink(orig: Callable) -> Callable:
    fn = _simple_write(orig, "unlink")
    fn.__name__ = "unlink"
    return fn


def make_remove(orig: Callable) -> Callable:
    fn = _simple_write(orig, "unlink")
    fn.__name__ = "remove"
    return fn


def make_rmdir(orig: Callable) -> Callable:
    fn = _simple_write(orig, "rmdir")
    fn.__name__ = "rmdir"
    return fn


def make_mkdir(orig: Callable) -> Callable:
    def mkdir(path, mode=0o777, *, dir_fd=None):
        if dir_fd is None and _fast_local(path, True):
            return orig(path, mode)
        remote = _remote_path(path, True, dir_fd)
        if remote is None:
            return orig(path, mode, dir_fd=dir_fd)
        rpath, shown = remote
        _call("mkdir", shown, path=rpath, mode=int(mode), umask=_umask())
        return None

    return mkdir


def _make_rename(orig: Callable, name: str) -> Callable:
    def rename(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
        if src_dir_fd is None and dst_dir_fd is None and _fast_local(src, True) and _fast_local(dst, True):
            return orig(src, dst)
        d1, p1, s1 = _route(src, True, src_dir_fd)
        d2, p2, s2 = _route(dst, True, dst_dir_fd)
        if d1 == LOCAL and d2 == LOCAL:
            return orig(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        if d1 == NOT_FOUND or d2 == NOT_FOUND:
            raise OSError(_errno.ENOENT, os.strerror(_errno.ENOENT), s1, None, s2)
        if d1 != d2:
            raise OSError(_errno.EXDEV, os.strerror(_errno.EXDEV), s1, None, s2)
        _call("rename", s1, s2, src=p1, dst=p2)
        return None

    rename.__name__ = name
    return rename


def make_rename(orig: Callable) -> Callable:
    return _make_rename(orig, "rename")


def make_replace(orig: Callable) -> Callable:
    return _make_rename(orig, "replace")


def make_truncate(orig: Callable) -> Callable:
    def truncate(path, length):
        if path.__class__ is int:
            if _fds:
                from . import file_meta

                found = file_meta._writable_remote(path)
                if found is not None:
                    return file_meta.ftruncate_remote(found[0], found[1], length, posix.ftruncate)
            return orig(path, length)
        if _fast_local(path, True):
            return orig(path, length)
        remote = _remote_path(path, True)
        if remote is None:
            return orig(path, length)
        rpath, shown = remote
        _call("truncate", shown, path=rpath, length=int(length))
        return None

    return truncate


def make_chmod(orig: Callable) -> Callable:
    def chmod(path, mode, *, dir_fd=None, follow_symlinks=True):
        if path.__class__ is int and _fds and _by_fd(path, "chmod", mode=int(mode)):
            return None
        if dir_fd is None and _fast_local(path, True):
            return orig(path, mode, follow_symlinks=follow_symlinks)
        remote = _remote_path(path, True, dir_fd)
        if remote is None:
            return orig(path, mode, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
        rpath, shown = remote
        _call("chmod", shown, path=rpath, mode=int(mode), follow=bool(follow_symlinks))
        return None

    return chmod


def make_utime(orig: Callable) -> Callable:
    def utime(path, times=None, *, ns=None, dir_fd=None, follow_symlinks=True):
        if path.__class__ is int and _fds and _entry(path) is not None:
            if times is not None and ns is not None:
                raise ValueError("utime: you may specify either 'times' or 'ns' but not both")
            if times is not None:
                ns = [int(t * 1_000_000_000) for t in times]
            _by_fd(path, "utime", ns=list(ns) if ns is not None else None)
            return None
        if dir_fd is None and _fast_local(path, True):
            if ns is None:
                return orig(path, times, follow_symlinks=follow_symlinks)
            return orig(path, times, ns=ns, follow_symlinks=follow_symlinks)
        remote = _remote_path(path, True, dir_fd)
        if remote is None:
            if ns is None:
                return orig(path, times, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
            return orig(path, times, ns=ns, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
        rpath, shown = remote
        if times is not None and ns is not None:
            raise ValueError("utime: you may specify either 'times' or 'ns' but not both")
        if times is not None:
            ns = [int(t * 1_000_000_000) for t in times]
        _call("utime", shown, path=rpath, ns=list(ns) if ns is not None else None, follow=bool(follow_symlinks))
        return None

    return utime


def make_symlink(orig: Callable) -> Callable:
    def symlink(src, dst, target_is_directory=False, *, dir_fd=None):
        if dir_fd is None and _fast_local(dst, True):
            return orig(src, dst, target_is_directory)
        remote = _remote_path(dst, True, dir_fd)
        if remote is None:
            return orig(src, dst, target_is_directory, dir_fd=dir_fd)
        rpath, shown = remote
        _call("symlink", src, shown, target=os.fsdecode(os.fspath(src)), path=rpath)
        return None

    return symlink


def make_listxattr(orig: Callable) -> Callable:
    def listxattr(path=None, *, follow_symlinks=True):
        if path.__class__ is int and _fds:
            from . import file_meta

            names = file_meta.read_xattrs_by_fd(path, "listxattr")
            if names is not None:
                return list(names)
        if path is None or path.__class__ is int or _fast_local(path, False):
            return orig(path, follow_symlinks=follow_symlinks)
        remote = _remote_path(path, False)
        if remote is None:
            return orig(path, follow_symlinks=follow_symlinks)
        rpath, shown = remote
        return list(_call("listxattr", shown, path=rpath, follow=bool(follow_symlinks)))

    return listxattr


def make_getxattr(orig: Callable) -> Callable:
    def getxattr(path, attribute, *, follow_symlinks=True):
        if path.__class__ is int and _fds:
            from . import file_meta

            found = file_meta.read_xattrs_by_fd(path, "getxattr", name=os.fsdecode(attribute))
            if found is not None:
                return bytes(found[1])
        if path.__class__ is int or _fast_local(path, False):
            return orig(path, attribute, follow_symlinks=follow_symlinks)
        remote = _remote_path(path, False)
        if remote is None:
            return orig(path, attribute, follow_symlinks=follow_symlinks)
        rpath, shown = remote
        _, data = _call("getxattr", shown, path=rpath, name=os.fsdecode(attribute), follow=bool(follow_symlinks))
        return bytes(data)

    return getxattr


def forget_all() -> None:
    """Uninstall: forget remote fds (their memory files stay valid for whoever holds them) and the rules."""
    with _fds_lock:
        entries = list(_fds.items())
        _fds.clear()
    for _fd, entry in entries:
        if entry.backing >= 0:
            try:
                posix.close(entry.backing)
            except OSError:
                pass
            entry.backing = -1
    reset()


def after_fork_in_child() -> None:
    """A forked child shares the parent's agent handles: it must not write back or close them."""
    with _fds_lock:
        for entry in _fds.values():
            entry.handle = None
            entry.writable = False


