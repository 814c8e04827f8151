"""Reaching the target from an agent that does not start inside it (the ephemeral and job placements).

``find_pid`` looks the target container's main process up by its container ID in ``/proc/*/cgroup`` (the
runtime names each container's cgroup after its ID). ``enter`` moves the agent into that process's network,
mount and UTS namespaces, the way nsenter would, so sockets, the resolver's files and the hostname are the
target's; it must run before the agent starts any thread. Without entering, files are served from the
target's root through ``/proc/<pid>/root``.
"""

from __future__ import annotations

import ctypes
import os

from . import env, files

_NAMESPACES = {"net": 0x40000000, "mnt": 0x00020000, "uts": 0x04000000}


def find_pid(container_id: str) -> int:
    ident = container_id.split("://", 1)[-1].strip()
    if len(ident) < 12 or not all(c in "0123456789abcdefABCDEF" for c in ident):
        raise ValueError(f"not a container ID: {container_id!r}")
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cgroup") as f:
                if ident in f.read():
                    found.append(int(name))
        except OSError:
            continue
    if not found:
        raise FileNotFoundError(2, f"no process of container {ident[:12]} is visible (hostPID or a shared process "
                                   "namespace is needed)")
    return min(found)


def _setns(fd: int, nstype: int) -> None:
    setns = getattr(os, "setns", None)  # Python 3.12+
    if setns is not None:
        setns(fd, nstype)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def enter(pid: int, namespaces: list) -> None:
    for name in namespaces:
        if name not in _NAMESPACES:
            raise ValueError(f"unknown namespace {name!r}")
    fds = [(name, os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY)) for name in namespaces]
    try:
        for name, fd in fds:
            _setns(fd, _NAMESPACES[name])
    finally:
        for _, fd in fds:
            os.close(fd)
    if "mnt" in namespaces:
        os.chdir("/")


def place(args: dict) -> dict:
    pid = args.get("pid")
    if args.get("container_id"):
        pid = find_pid(str(args["container_id"]))
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise ValueError("place needs a container_id or a pid")
    namespaces = args.get("enter") or []
    if not isinstance(namespaces, list):
        raise TypeError("enter must be a list of namespace names")
    result: dict = {"pid": pid}
    if args.get("environ"):
        # Read before entering: inside the target's mount namespace /proc may count pids differently.
        result["environ"] = env.read_environ({"pid": pid})
    if namespaces:
        enter(pid, namespaces)
    if "mnt" not in namespaces and args.get("files", True):
        files.set_root(f"/proc/{pid}/root")
    return result
