"""The rest of the file surface: ownership, hard links, FIFOs and device nodes, extended attributes, file system
statistics, the working directory, and changes made through an fd of a target's file.

Each follows ``fs.mode`` exactly like its siblings in :mod:`.files` — ``os.chown`` like ``os.chmod``, ``os.link``
like ``os.rename``, ``os.mkfifo`` like ``os.mkdir``, ``os.statvfs`` like ``os.stat`` — so nothing acts on the
laptop while its sibling acts on the pod. A change through an fd of a target's file (``os.fchmod``,
``os.fchown``, ``os.ftruncate``, ``os.setxattr(fd, ...)``) happens in the target, on the file the agent holds
open for a writable fd, by path otherwise; when the rules keep writes to that path local (read mode), there is
no laptop file behind the fd, and the change fails with ``EROFS``, as on a read-only mount, instead of
quietly changing nothing.

``os.chdir`` into a directory of the target fails with a clear error: the process's working directory is a
kernel property of this machine, and pretending otherwise would make ``open("x")`` and ``os.listdir(".")``
disagree about where they are.
"""

from __future__ import annotations

import errno as _errno
import os
import stat as _stat
from typing import Any, Callable

from . import files
from .file_rules import LOCAL, NOT_FOUND


def _fd_number(fd: Any) -> int | None:
    """The fd an ``os`` fd function would use: an int, or an object's ``fileno()``."""
    if fd.__class__ is int:
        return fd
    try:
        number = fd.fileno() if hasattr(fd, "fileno") else None
    except (OSError, ValueError):
        return None
    return number if isinstance(number, int) else None


def remote_fd(fd: Any) -> files._Remote | None:
    """The remote entry ``fd`` stands for, or None for an ordinary fd."""
    if not files._fds:
        return None
    number = _fd_number(fd)
    return files._entry(number) if number is not None else None


def _target(entry: files._Remote) -> dict:
    # The agent's own open file when it keeps one (writable files): right even after a rename in the pod.
    if entry.handle is not None:
        return {"h": entry.handle}
    return {"path": entry.path, "follow": True}


def change_by_fd(fd: Any, fn: str, **args: Any) -> bool:
    """Makes a change through ``fd`` in the target; False when ``fd`` is not a target's file (the caller runs
    the original)."""
    entry = remote_fd(fd)
    if entry is None:
        return False
    if not entry.changeable:
        raise OSError(_errno.EROFS, os.strerror(_errno.EROFS), entry.path)
    files._call(fn, None, **_target(entry), **args)
    return True


def _read_by_fd(entry: files._Remote, fn: str, **args: Any) -> Any:
    return files._call(fn, None, **_target(entry), **args)


def ftruncate_remote(fd: int, entry: files._Remote, length: int, orig: Callable) -> None:
    """Truncates now in the target and in the local copy: what was written before goes first, and an appending
    file's next flush starts at the new end."""
    files.sync(fd, entry)
    orig(fd, length)
    files._call("ftruncate", None, h=entry.handle, size=int(length))
    if entry.append:
        entry.base = int(length)
    entry.dirty_mark = files._mark(entry.backing)


def _writable_remote(fd: Any) -> tuple[int, files._Remote] | None:
    number = _fd_number(fd) if files._fds else None
    entry = files._entry(number) if number is not None else None
    if entry is None or not entry.writable or entry.handle is None or entry.backing < 0:
        return None  # a read-only fd: the local copy's access mode gives the target's EINVAL/EBADF
    return number, entry  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------ fd forms
def make_fchmod(orig: Callable) -> Callable:
    def fchmod(fd, mode):
        if change_by_fd(fd, "chmod", mode=int(mode)):
            return None
        return orig(fd, mode)

    return fchmod


def make_fchown(orig: Callable) -> Callable:
    def fchown(fd, uid, gid):
        if change_by_fd(fd, "chown", uid=int(uid), gid=int(gid)):
            return None
        return orig(fd, uid, gid)

    return fchown


def make_ftruncate(orig: Callable) -> Callable:
    def ftruncate(fd, length):
        found = _writable_remote(fd)
        if found is None:
            return orig(fd, length)
        ftruncate_remote(found[0], found[1], length, orig)
        return None

    return ftruncate


def make_fstatvfs(orig: Callable) -> Callable:
    def fstatvfs(fd):
        entry = remote_fd(fd)
        if entry is None:
            return orig(fd)
        return statvfs_from_list(_read_by_fd(entry, "statvfs"))

    return fstatvfs


def make_fchdir(orig: Callable) -> Callable:
    def fchdir(fd):
        entry = remote_fd(fd)
        if entry is not None and entry.is_dir:
            raise _cannot_chdir(entry.path)
        return orig(fd)

    return fchdir


# ---------------------------------------------------------------------------------------------- path forms
def make_chown(orig: Callable) -> Callable:
    def chown(path, uid, gid, *, dir_fd=None, follow_symlinks=True):
        if path.__class__ is int:
            if change_by_fd(path, "chown", uid=int(uid), gid=int(gid)):
                return None
            return orig(path, uid, gid)
        if dir_fd is None and files._fast_local(path, True):
            return orig(path, uid, gid, follow_symlinks=follow_symlinks)
        remote = files._remote_path(path, True, dir_fd)
        if remote is None:
            return orig(path, uid, gid, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
        rpath, shown = remote
        files._call("chown", shown, path=rpath, uid=int(uid), gid=int(gid), follow=bool(follow_symlinks))
        return None

    return chown


def make_lchown(orig: Callable) -> Callable:
    def lchown(path, uid, gid):
        if files._fast_local(path, True):
            return orig(path, uid, gid)
        remote = files._remote_path(path, True)
        if remote is None:
            return orig(path, uid, gid)
        rpath, shown = remote
        files._call("chown", shown, path=rpath, uid=int(uid), gid=int(gid), follow=False)
        return None

    return lchown


def make_link(orig: Callable) -> Callable:
    def link(src, dst, *, src_dir_fd=None, dst_dir_fd=None, follow_symlinks=True):
        if (src_dir_fd is None and dst_dir_fd is None and files._fast_local(src, True)
                and files._fast_local(dst, True)):
            return orig(src, dst, follow_symlinks=follow_symlinks)
        d1, p1, s1 = files._route(src, True, src_dir_fd)
        d2, p2, s2 = files._route(dst, True, dst_dir_fd)
        if d1 == LOCAL and d2 == LOCAL:
            return orig(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=follow_symlinks)
        if d1 == NOT_FOUND or d2 == NOT_FOUND:
            raise OSError(_errno.ENOENT, os.strerror(_errno.ENOENT), s1, None, s2)
        if d1 != d2:
            # One name on each side: as between two file systems.
            raise OSError(_errno.EXDEV, os.strerror(_errno.EXDEV), s1, None, s2)
        files._call("link", s1, s2, src=p1, dst=p2, follow=bool(follow_symlinks))
        return None

    return link


def _mknod(orig: Callable, path: Any, mode: int, device: int, dir_fd: Any, local: Callable[[], Any]) -> Any:
    if dir_fd is None and files._fast_local(path, True):
        return local()
    remote = files._remote_path(path, True, dir_fd)
    if remote is None:
        return local()
    rpath, shown = remote
    files._call("mknod", shown, path=rpath, mode=int(mode), device=int(device), umask=files._umask())
    return None


def make_mkfifo(orig: Callable) -> Callable:
    def mkfifo(path, mode=0o666, *, dir_fd=None):
        return _mknod(orig, path, _stat.S_IFIFO | (int(mode) & 0o7777), 0, dir_fd,
                      lambda: orig(path, mode, dir_fd=dir_fd))

    return mkfifo


def make_mknod(orig: Callable) -> Callable:
    def mknod(path, mode=0o600, device=0, *, dir_fd=None):
        return _mknod(orig, path, mode, device, dir_fd, lambda: orig(path, mode, device, dir_fd=dir_fd))

    return mknod


def make_setxattr(orig: Callable) -> Callable:
    def setxattr(path, attribute, value, flags=0, *, follow_symlinks=True):
        name = os.fsdecode(attribute)
        if path.__class__ is int:
            if change_by_fd(path, "setxattr", data=bytes(value), name=name, flags=int(flags)):
                return None
            return orig(path, attribute, value, flags)
        if files._fast_local(path, True):
            return orig(path, attribute, value, flags, follow_symlinks=follow_symlinks)
        remote = files._remote_path(path, True)
        if remote is None:
            return orig(path, attribute, value, flags, follow_symlinks=follow_symlinks)
        rpath, shown = remote
        files._call("setxattr", shown, data=bytes(value), path=rpath, name=name, flags=int(flags),
                    follow=bool(follow_symlinks))
        return None

    return setxattr


def make_removexattr(orig: Callable) -> Callable:
    def removexattr(path, attribute, *, follow_symlinks=True):
        name = os.fsdecode(attribute)
        if path.__class__ is int:
            if change_by_fd(path, "removexattr", name=name):
                return None
            return orig(path, attribute)
        if files._fast_local(path, True):
            return orig(path, attribute, follow_symlinks=follow_symlinks)
        remote = files._remote_path(path, True)
        if remote is None:
            return orig(path, attribute, follow_symlinks=follow_symlinks)
        rpath, shown = remote
        files._call("removexattr", shown, path=rpath, name=name, follow=bool(follow_symlinks))
        return None

    return removexattr


def read_xattrs_by_fd(fd: int, fn: str, **args: Any) -> Any:
    """``os.listxattr(fd)`` / ``os.getxattr(fd, ...)`` of a target's file, or None for an ordinary fd."""
    entry = remote_fd(fd)
    if entry is None:
        return None
    return _read_by_fd(entry, fn, **args)


def statvfs_from_list(fields: list) -> os.statvfs_result:
    return os.statvfs_result(tuple(fields[:10]), {"f_fsid": fields[10]})


def make_statvfs(orig: Callable) -> Callable:
    def statvfs(path):
        if path.__class__ is int:
            entry = remote_fd(path)
            if entry is None:
                return orig(path)
            return statvfs_from_list(_read_by_fd(entry, "statvfs"))
        if files._fast_local(path, False):
            return orig(path)
        remote = files._remote_path(path, False)
        if remote is None:
            return orig(path)
        rpath, shown = remote
        return statvfs_from_list(files._call("statvfs", shown, path=rpath))

    return statvfs


def _cannot_chdir(shown: Any) -> OSError:
    return OSError(_errno.ENOTSUP, "Operation not supported: the working directory stays on this machine and "
                   "this directory is the target's (use absolute paths, or list it in fs.local)", shown)


def make_chdir(orig: Callable) -> Callable:
    def chdir(path):
        if path.__class__ is int:
            entry = remote_fd(path)
            if entry is not None and entry.is_dir:
                raise _cannot_chdir(entry.path)
            return orig(path)
        if files._fast_local(path, False):
            return orig(path)
        remote = files._remote_path(path, False)  # raises FileNotFoundError for a not_found path
        if remote is None:
            return orig(path)
        raise _cannot_chdir(remote[1])

    return chdir
