"""File operations in the target's file system, confined to the target's root.

Every path is resolved inside a root directory: ``/`` when the agent runs in the target's own mount namespace,
``/proc/<pid>/root`` when it reaches the target from outside (the job placement). Inside a root other than
``/`` the agent resolves paths itself, one component at a time, following symlinks relative to the root and
clamping ``..`` at it, and finishes every operation on a directory fd with ``O_NOFOLLOW`` semantics: a
symlink to ``/`` or a path full of ``..`` resolves to the target's own files, never to the agent's or the
node's. With the root ``/`` the kernel resolves paths exactly like that already, so the agent lets it.

The shim fetches whole files (it gives the app a real fd holding the content), so reads are ``pread``s of up
to :data:`CHUNK` bytes on a handle the agent keeps open; writes come back on the same handle. The blocking
calls run on a small thread pool, so a slow volume stalls file requests only, never the connections.

Standard library only, Python 3.9+.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat as stat_mod
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

#: Bytes of file content in one reply: a control frame holds at most 1 MiB, and the reply's map needs a few.
CHUNK = (1 << 20) - 4096
MAX_SYMLINKS = 40
ROOT_ENV = "MIRROR_PY_AGENT_FS_ROOT"

_O_PATH = getattr(os, "O_PATH", 0)
_DIR_FLAGS = _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_pool: list[ThreadPoolExecutor] = []
_handles: dict[int, int] = {}
_next_handle = [1]
_lock = threading.Lock()
_root: list[Root] = []


def _error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class Root:
    """The directory every path is resolved in; ``/`` leaves resolution to the kernel."""

    def __init__(self, path: str = "/") -> None:
        self.path = os.path.abspath(path)
        self.kernel = self.path == "/"
        # The root itself is followed: /proc/<pid>/root is a symlink by design; only what lies below it is not.
        self.fd = -1 if self.kernel else os.open(self.path, _DIR_FLAGS & ~os.O_NOFOLLOW)

    @classmethod
    def inside(cls, base: Root, path: str) -> Root:
        """The directory ``path`` of ``base`` as a root of its own, found by ``base``'s confined resolution."""
        res = base.resolve(path, follow_last=True)
        try:
            if res.dir_fd is None:
                return cls(res.name)
            fd = os.open(res.name, _DIR_FLAGS, dir_fd=res.dir_fd)
        finally:
            res.close(base)
        root = cls.__new__(cls)
        root.path, root.kernel, root.fd = os.path.join(base.path, path.lstrip("/")), False, fd
        return root

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # ---------------------------------------------------------------------------------------- resolving
    def resolve(self, path: str, follow_last: bool = True, lenient: bool = False) -> Resolved:
        """Where ``path`` lives: a directory fd (None: the kernel resolves from /) and a name in it.

        With ``follow_last`` a symlink in the last component is followed (inside the root); the name returned
        is then not a symlink, or does not exist (a create makes it there). The name is ``"."`` when the path
        is a directory reached through ``..`` or ``/`` itself. ``lenient`` (for ``realpath``) keeps a part that
        cannot be looked up as written and only fills in :attr:`Resolved.parts`.
        """
        if not isinstance(path, str) or not path:
            raise _error(errno.ENOENT)
        if "\0" in path:
            raise ValueError("embedded null byte")
        if self.kernel:
            return Resolved(None, path if path.startswith("/") else "/" + path, [])
        parts = path.split("/")
        # "dir/" and "dir/." name a directory: a final symlink is followed and the result must be a directory.
        trailing = parts[-1] in ("", ".")
        if trailing:
            follow_last = True
        todo = [p for p in parts if p not in ("", ".")]
        todo.reverse()  # a stack: the next component is at the end
        stack: list[int] = []
        names: list[str] = []
        hops = 0
        try:
            while todo:
                comp = todo.pop()
                if comp == "..":
                    if stack:  # at the root, ".." is the root itself
                        os.close(stack.pop())
                        names.pop()
                    continue
                cur = stack[-1] if stack else self.fd
                last = not todo
                if last and not follow_last:
                    return Resolved(self._take(stack), comp, names + [comp])
                try:
                    st = os.stat(comp, dir_fd=cur, follow_symlinks=False)
                except FileNotFoundError:
                    if last:
                        return Resolved(self._take(stack), comp, names + [comp])
                    if lenient:
                        return Resolved(self._take(stack), ".", _lexical(names + [comp], todo))
                    raise
                except OSError:
                    if lenient:
                        return Resolved(self._take(stack), ".", _lexical(names + [comp], todo))
                    raise
                if stat_mod.S_ISLNK(st.st_mode):
                    hops += 1
                    if hops > MAX_SYMLINKS:
                        if lenient:
                            return Resolved(self._take(stack), ".", names + [comp] + todo[::-1])
                        raise _error(errno.ELOOP)
                    target = os.readlink(comp, dir_fd=cur)
                    if target.startswith("/"):
                        while stack:
                            os.close(stack.pop())
                        names = []
                    todo.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
                    continue
                if last:
                    if trailing and not stat_mod.S_ISDIR(st.st_mode) and not lenient:
                        raise _error(errno.ENOTDIR)
                    return Resolved(self._take(stack), comp, names + [comp])
                if not stat_mod.S_ISDIR(st.st_mode):
                    if lenient:
                        return Resolved(self._take(stack), ".", _lexical(names + [comp], todo))
                    raise _error(errno.ENOTDIR)
                stack.append(os.open(comp, _DIR_FLAGS, dir_fd=cur))
                names.append(comp)
            return Resolved(self._take(stack), ".", names)
        except BaseException:
            while stack:
                os.close(stack.pop())
            raise

    def _take(self, stack: list[int]) -> int:
        """Closes the fds of a walk except the one the result refers to (the root's own is never closed)."""
        keep = stack.pop() if stack else None
        while stack:
            os.close(stack.pop())
        if keep is None:
            return self.fd
        return keep

    def read_small(self, path: str, limit: int = 1 << 20) -> bytes | None:
        """The content of a small regular file inside the root (the resolver's files), or None when it is
        missing or not a regular file. ``O_NONBLOCK`` and the type check keep a FIFO or a device planted by
        the target from blocking or flooding the agent."""
        try:
            res = self.resolve(path, follow_last=True)
        except (OSError, ValueError):
            return None
        try:
            flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
            if res.dir_fd is None:
                fd = os.open(res.name, flags & ~os.O_NOFOLLOW)
            else:
                fd = os.open(res.name, flags, dir_fd=res.dir_fd)
            res._opened = fd
            if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
                return None
            chunks, size = [], 0
            while size < limit:
                chunk = os.read(fd, min(1 << 16, limit - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)
        except OSError:
            return None
        finally:
            res.close(self)

    def stat(self, path: str) -> os.stat_result:
        """``os.stat`` of a path inside the root, following links inside it (the resolver files' watch)."""
        res = self.resolve(path, follow_last=True)
        try:
            return os.stat(res.name, **_kw(res))
        finally:
            res.close(self)

    def realpath(self, path: str, strict: bool = False) -> str:
        """The canonical path as seen inside the root; like ``os.path.realpath``, a part that does not exist
        is kept as written unless ``strict``."""
        if self.kernel:
            if strict:
                os.stat(path)  # the strict= argument is 3.10+; this raises the same error
            return os.path.realpath(path)
        res = self.resolve(path, follow_last=True, lenient=not strict)
        try:
            if strict and res.name != ".":
                os.stat(res.name, dir_fd=res.dir_fd, follow_symlinks=False)
            return "/" + "/".join(res.parts)
        finally:
            res.close(self)


def _lexical(names: list[str], todo: list[str]) -> list[str]:
    """The rest of a path that cannot be looked up, applied as text (``..`` drops the part before it)."""
    out = list(names)
    for comp in reversed(todo):
        if comp == "..":
            if out:
                out.pop()
        else:
            out.append(comp)
    return out


class Resolved:
    """A resolved path: operate on ``name`` relative to ``dir_fd`` (None: ``name`` is absolute)."""

    __slots__ = ("_opened", "dir_fd", "name", "parts")

    def __init__(self, dir_fd: int | None, name: str, parts: list[str]) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.parts = parts
        self._opened = -1

    def close(self, root: Root) -> None:
        if self._opened >= 0:
            os.close(self._opened)
            self._opened = -1
        if self.dir_fd is not None and self.dir_fd != root.fd:
            os.close(self.dir_fd)
        self.dir_fd = None


def _open_dir(res: Resolved) -> int:
    """An fd of the directory ``res`` names (for *at calls on its entries)."""
    if res.dir_fd is None:
        fd = os.open(res.name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    else:
        fd = os.open(res.name, _DIR_FLAGS, dir_fd=res.dir_fd)
    res._opened = fd
    return fd


def root() -> Root:
    if not _root:
        _root.append(Root(os.environ.get(ROOT_ENV) or "/"))
    return _root[0]


def set_root(path: str | Root) -> None:
    """Serve files from inside ``path`` from now on (placements pass ``/proc/<pid>/root``)."""
    new = path if isinstance(path, Root) else Root(path)
    while _root:
        _root.pop().close()
    _root.append(new)


# ------------------------------------------------------------------------------------------------ helpers
def stat_list(st: os.stat_result) -> list:
    """A stat result on the wire: the fields every platform's ``os.stat_result`` can be rebuilt from."""
    return [
        st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
        st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns,
        getattr(st, "st_blksize", 0), getattr(st, "st_blocks", 0), getattr(st, "st_rdev", 0),
    ]


def _path(args: dict, key: str = "path") -> str:
    value = args[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string")
    return value


def _int(args: dict, key: str, default: int | None = None) -> int:
    value = args.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{key} must be an integer")
    return value


def _with(path: str, follow: bool, fn: Callable[[Resolved], Any]) -> Any:
    r = root()
    res = r.resolve(path, follow_last=follow)
    try:
        return fn(res)
    finally:
        res.close(r)


def _kw(res: Resolved) -> dict:
    # Confined: the last component was resolved already; never let the kernel follow it again.
    return {} if res.dir_fd is None else {"dir_fd": res.dir_fd}


def _nofollow(res: Resolved, follow: bool) -> bool:
    return follow if res.dir_fd is None else False


def _mode(args: dict, default: int) -> int:
    mode = _int(args, "mode", default)
    umask = args.get("umask")
    if isinstance(umask, int) and not isinstance(umask, bool):
        mode &= ~umask
    return mode


# ---------------------------------------------------------------------------------------------- metadata
def _stat(args: dict) -> list:
    follow = bool(args.get("follow", True))
    return _with(_path(args), follow,
                 lambda res: stat_list(os.stat(res.name, **_kw(res), follow_symlinks=_nofollow(res, follow))))


def _access(args: dict) -> bool:
    mode = _int(args, "mode")
    follow = bool(args.get("follow", True))
    return _with(_path(args), follow, lambda res: os.access(
        res.name, mode, **_kw(res), effective_ids=bool(args.get("effective_ids")),
        follow_symlinks=_nofollow(res, follow)))


def _listdir(args: dict) -> list:
    def run(res: Resolved) -> list:
        if res.dir_fd is None:
            return os.listdir(res.name)
        fd = os.open(res.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=res.dir_fd)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    return _with(_path(args), True, run)


def _entry_kind(mode: int) -> str:
    if stat_mod.S_ISDIR(mode):
        return "d"
    if stat_mod.S_ISREG(mode):
        return "f"
    if stat_mod.S_ISLNK(mode):
        return "l"
    return "o"


def _scandir(args: dict) -> list:
    """Each entry as ``[name, kind, lstat, target, d_ino]``: its lstat and, for a symlink, the stat of its
    target (resolved inside the root) or the errno, so that ``is_dir()``, ``stat()`` and friends on the app's
    side need no further round trip."""
    path = _path(args)

    def run(res: Resolved) -> list:
        if res.dir_fd is None:
            fd = os.open(res.name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            fd = os.open(res.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=res.dir_fd)
        out = []
        try:
            with os.scandir(fd) as entries:
                listed = [(e.name, e.inode()) for e in entries]  # d_ino: what the app's DirEntry.inode() says
            for name, ino in listed:
                try:
                    lst = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError as exc:
                    out.append([name, "o", None, exc.errno or errno.EIO, ino])
                    continue
                target: Any = None
                if stat_mod.S_ISLNK(lst.st_mode):
                    try:
                        target = _stat({"path": path.rstrip("/") + "/" + name, "follow": True})
                    except OSError as exc:
                        target = exc.errno or errno.EIO
                out.append([name, _entry_kind(lst.st_mode), stat_list(lst), target, ino])
        finally:
            os.close(fd)
        return out

    return _with(path, True, run)


def _readlink(args: dict) -> str:
    return _with(_path(args), False, lambda res: os.readlink(res.name, **_kw(res)))


def _realpath(args: dict) -> str:
    return root().realpath(_path(args), bool(args.get("strict")))


def _on(args: dict, follow: bool, on_fd: Callable[[int], Any], on_path: Callable[[Resolved], Any]) -> Any:
    """Runs an operation on what the request names: ``h``, a file the agent holds open for the app (the app's
    fd stands for it, so ``fchmod`` reaches the very file even after a rename), or ``path``, resolved inside
    the root."""
    if args.get("h") is not None:
        return on_fd(_handle(args))
    return _with(_path(args), follow, on_path)


def _through_fd(res: Resolved, follow: bool, call: Callable[[str, bool], Any]) -> Any:
    """For the calls that take no ``dir_fd`` (xattrs, statvfs): inside a root other than ``/`` the resolved
    name is opened with ``O_PATH | O_NOFOLLOW`` and reached through ``/proc/self/fd``, so the kernel never
    resolves the path again."""
    if res.dir_fd is None:
        return call(res.name, follow)
    fd = os.open(res.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | _O_PATH, dir_fd=res.dir_fd)
    try:
        return call(f"/proc/self/fd/{fd}", True)
    finally:
        os.close(fd)


def _listxattr(args: dict) -> list:
    follow = bool(args.get("follow", True))
    return _on(args, follow, os.listxattr,
               lambda res: _through_fd(res, follow, lambda p, f: os.listxattr(p, follow_symlinks=f)))


def _getxattr(args: dict) -> bytes:
    follow = bool(args.get("follow", True))
    attr = _path(args, "name")
    return _on(args, follow, lambda fd: os.getxattr(fd, attr),
               lambda res: _through_fd(res, follow, lambda p, f: os.getxattr(p, attr, follow_symlinks=f)))


def statvfs_list(st: os.statvfs_result) -> list:
    """A statvfs result on the wire, ``f_fsid`` last."""
    return [st.f_bsize, st.f_frsize, st.f_blocks, st.f_bfree, st.f_bavail, st.f_files, st.f_ffree, st.f_favail,
            st.f_flag, st.f_namemax, getattr(st, "f_fsid", 0)]


def _statvfs(args: dict) -> list:
    return statvfs_list(_on(args, True, os.statvfs, lambda res: _through_fd(res, True, lambda p, f: os.statvfs(p))))


# ------------------------------------------------------------------------------------------------ changes
def _mkdir(args: dict) -> None:
    mode = _mode(args, 0o777)
    _with(_path(args), False, lambda res: os.mkdir(res.name, mode, **_kw(res)))


def _rmdir(args: dict) -> None:
    _with(_path(args), False, lambda res: os.rmdir(res.name, **_kw(res)))


def _unlink(args: dict) -> None:
    _with(_path(args), False, lambda res: os.unlink(res.name, **_kw(res)))


def _with_pair(args: dict, follow_src: bool, act: Any) -> None:
    """Resolves ``src`` and ``dst`` inside the root (only ``src``'s final symlink may be followed) and runs
    ``act(src, dst)``, closing both whatever happens."""
    r = root()
    src = r.resolve(_path(args, "src"), follow_last=follow_src)
    try:
        dst = r.resolve(_path(args, "dst"), follow_last=False)
        try:
            act(src, dst)
        finally:
            dst.close(r)
    finally:
        src.close(r)


def _rename(args: dict) -> None:
    def rename(src: Any, dst: Any) -> None:
        if src.dir_fd is None:
            os.rename(src.name, dst.name)
        else:
            os.rename(src.name, dst.name, src_dir_fd=src.dir_fd, dst_dir_fd=dst.dir_fd)

    _with_pair(args, False, rename)


def _symlink(args: dict) -> None:
    target = _path(args, "target")
    _with(_path(args), False, lambda res: os.symlink(target, res.name, **_kw(res)))


def _link(args: dict) -> None:
    """A hard link. The existing file is resolved inside the root like any other path (following a final
    symlink only when asked), so a link can only ever give a second name to a file of the target."""
    follow = bool(args.get("follow", True))

    def link(src: Any, dst: Any) -> None:
        if src.dir_fd is None:
            os.link(src.name, dst.name, follow_symlinks=follow)
        else:
            os.link(src.name, dst.name, src_dir_fd=src.dir_fd, dst_dir_fd=dst.dir_fd, follow_symlinks=False)

    _with_pair(args, follow, link)


def _mknod(args: dict) -> None:
    """FIFOs (``os.mkfifo``), regular files and, with the privilege, device nodes."""
    mode = _mode(args, 0o600)
    device = _int(args, "device", 0)
    _with(_path(args), False, lambda res: os.mknod(res.name, mode, device, **_kw(res)))


def _truncate(args: dict) -> None:
    length = _int(args, "length")

    def run(res: Resolved) -> None:
        if res.dir_fd is None:
            os.truncate(res.name, length)
            return
        fd = os.open(res.name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=res.dir_fd)
        try:
            os.ftruncate(fd, length)
        finally:
            os.close(fd)

    _with(_path(args), True, run)


def _chmod(args: dict) -> None:
    mode = _int(args, "mode")
    follow = bool(args.get("follow", True))

    def run(res: Resolved) -> None:
        if res.dir_fd is None:
            os.chmod(res.name, mode, follow_symlinks=follow)
            return
        st = os.stat(res.name, dir_fd=res.dir_fd, follow_symlinks=False)
        if stat_mod.S_ISLNK(st.st_mode):
            raise _error(errno.EOPNOTSUPP)  # Linux cannot chmod a symlink itself
        fd = os.open(res.name, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=res.dir_fd)
        try:
            os.chmod(f"/proc/self/fd/{fd}", mode)
        finally:
            os.close(fd)

    _on(args, follow, lambda fd: os.chmod(fd, mode), run)


def _chown(args: dict) -> None:
    uid = _int(args, "uid")
    gid = _int(args, "gid")
    follow = bool(args.get("follow", True))
    _on(args, follow, lambda fd: os.chown(fd, uid, gid),
        lambda res: os.chown(res.name, uid, gid, **_kw(res), follow_symlinks=_nofollow(res, follow)))


def _utime(args: dict) -> None:
    follow = bool(args.get("follow", True))
    ns = args.get("ns")
    times = None
    if ns is not None:
        if not isinstance(ns, list) or len(ns) != 2 or not all(isinstance(x, int) for x in ns):
            raise TypeError("ns must be a list of two integers")
        times = (ns[0], ns[1])

    def run(res: Resolved) -> None:
        if times is None:
            os.utime(res.name, **_kw(res), follow_symlinks=_nofollow(res, follow))
        else:
            os.utime(res.name, ns=times, **_kw(res), follow_symlinks=_nofollow(res, follow))

    _on(args, follow, lambda fd: os.utime(fd) if times is None else os.utime(fd, ns=times), run)


def _setxattr(args: dict) -> None:
    follow = bool(args.get("follow", True))
    attr = _path(args, "name")
    value = args.get("data")
    if not isinstance(value, (bytes, bytearray)):
        raise TypeError("data must be bytes")
    flags = _int(args, "flags", 0)
    _on(args, follow, lambda fd: os.setxattr(fd, attr, value, flags),
        lambda res: _through_fd(res, follow, lambda p, f: os.setxattr(p, attr, value, flags, follow_symlinks=f)))


def _removexattr(args: dict) -> None:
    follow = bool(args.get("follow", True))
    attr = _path(args, "name")
    _on(args, follow, lambda fd: os.removexattr(fd, attr),
        lambda res: _through_fd(res, follow, lambda p, f: os.removexattr(p, attr, follow_symlinks=f)))


# ------------------------------------------------------------------------------------------------ content
def _read_at(fd: int, offset: int, size: int, regular: bool) -> bytes:
    if regular:
        return os.pread(fd, size, offset)
    return os.read(fd, size)


def _open(args: dict) -> dict:
    """Opens (creating or truncating as the flags say), and returns the stat plus the first chunk.

    A file that fits in the first reply is closed at once, so reading a small file costs one round trip;
    otherwise the reply carries a handle for ``read``, ``write`` and ``close``.
    """
    path = _path(args)
    flags = _int(args, "flags")
    mode = _mode(args, 0o666)
    fetch = bool(args.get("fetch", True))
    keep = bool(args.get("keep"))
    follow = not (flags & os.O_NOFOLLOW) and not (flags & os.O_CREAT and flags & os.O_EXCL)
    flags |= os.O_CLOEXEC
    flags &= ~getattr(os, "O_NOCTTY", 0)
    r = root()
    res = r.resolve(path, follow_last=follow)
    try:
        if res.dir_fd is None:
            fd = os.open(res.name, flags, mode)
        else:
            fd = os.open(res.name, flags | os.O_NOFOLLOW, mode, dir_fd=res.dir_fd)
    finally:
        res.close(r)
    try:
        st = os.fstat(fd)
        is_dir = stat_mod.S_ISDIR(st.st_mode)
        regular = stat_mod.S_ISREG(st.st_mode)
        data = b""
        eof = True
        if fetch and not is_dir and flags & os.O_ACCMODE != os.O_WRONLY:
            data = _read_at(fd, 0, CHUNK, regular)
            eof = len(data) < CHUNK if regular else not data
        out = {"st": stat_list(st), "dir": is_dir, "data": data, "eof": eof, "h": None}
        if keep or not eof:
            out["h"] = _register(fd)
            fd = -1
        return out
    finally:
        if fd >= 0:
            os.close(fd)


def _register(fd: int) -> int:
    with _lock:
        h = _next_handle[0]
        _next_handle[0] += 1
        _handles[h] = fd
    return h


def _handle(args: dict) -> int:
    fd = _handles.get(_int(args, "h"))
    if fd is None:
        raise _error(errno.EBADF)
    return fd


def _read(args: dict) -> dict:
    fd = _handle(args)
    size = min(_int(args, "size", CHUNK), CHUNK)
    offset = _int(args, "off", 0)
    regular = stat_mod.S_ISREG(os.fstat(fd).st_mode)
    data = _read_at(fd, offset, size, regular)
    return {"data": data, "eof": len(data) < size if regular else not data}


def _write(args: dict) -> int:
    """Writes at ``off``, or at the end when the handle was opened for appending (``off`` null)."""
    fd = _handle(args)
    data = args["data"]
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("data must be bytes")
    offset = args.get("off")
    view = memoryview(data)
    done = 0
    while done < len(view):
        if offset is None:
            n = os.write(fd, view[done:])
        else:
            n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise _error(errno.EIO)
        done += n
    return done


def _ftruncate(args: dict) -> None:
    os.ftruncate(_handle(args), _int(args, "size"))


def _fstat(args: dict) -> list:
    return stat_list(os.fstat(_handle(args)))


def _close(args: dict) -> None:
    with _lock:
        fd = _handles.pop(_int(args, "h"), None)
    if fd is None:
        raise _error(errno.EBADF)
    os.close(fd)


def close_all() -> None:
    """The channel closed: close every handle the session left open."""
    with _lock:
        fds = list(_handles.values())
        _handles.clear()
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _set_root(args: dict) -> None:
    set_root(_path(args, "root"))


_FUNCTIONS: dict[str, Callable[[dict], Any]] = {
    "stat": _stat,
    "access": _access,
    "listdir": _listdir,
    "scandir": _scandir,
    "readlink": _readlink,
    "realpath": _realpath,
    "listxattr": _listxattr,
    "getxattr": _getxattr,
    "mkdir": _mkdir,
    "rmdir": _rmdir,
    "unlink": _unlink,
    "rename": _rename,
    "symlink": _symlink,
    "link": _link,
    "mknod": _mknod,
    "chown": _chown,
    "setxattr": _setxattr,
    "removexattr": _removexattr,
    "statvfs": _statvfs,
    "truncate": _truncate,
    "chmod": _chmod,
    "utime": _utime,
    "open": _open,
    "read": _read,
    "write": _write,
    "ftruncate": _ftruncate,
    "fstat": _fstat,
    "close": _close,
    "set_root": _set_root,
}


def call(args: dict) -> Any:
    """Runs one operation synchronously (tests and the thread pool use this)."""
    fn = _FUNCTIONS.get(args.get("fn"))  # type: ignore[arg-type]
    if fn is None:
        raise ValueError(f"unknown file operation {args.get('fn')!r}")
    return fn(args)


async def serve(args: dict) -> Any:
    """Runs one operation on the file pool: file systems block (NFS, a slow disk), the event loop must not."""
    if args.get("fn") not in _FUNCTIONS:
        raise ValueError(f"unknown file operation {args.get('fn')!r}")
    if not _pool:
        _pool.append(ThreadPoolExecutor(max_workers=4, thread_name_prefix="mirror-py-fs"))
    return await asyncio.get_running_loop().run_in_executor(_pool[0], call, args)
