"""Reaching the target from an agent that does not start inside it (the ephemeral and job placements, and
``pid/`` targets).

``find_pid`` looks the target container's init process up by its container ID in ``/proc/*/cgroup`` (the
runtime names each container's cgroup after its ID; :mod:`containers` says which names count). ``enter``
moves the agent into that process's network and UTS namespaces, the way nsenter would, so its sockets and host
name are the target's; it must run before the agent starts any thread.

The agent never enters the target's mount namespace. There it would run as a more privileged process than the
target (the job pod is privileged, a ``pid/`` agent is host root) among the target's files: a lazy import, a
glibc NSS module or a helper binary would then be the target's code running with the agent's privilege. So files
are served from the target's root through ``/proc/<pid>/root`` (:mod:`files` confines every path to it), the
environment is read from ``/proc/<pid>/environ``, and a "rooted" placement resolves names with the stub resolver
over the target's resolver files (:mod:`resolver`). Everything the agent may import later is imported before it
joins any namespace (:data:`PREIMPORT`), so no code is looked up once the agent is placed.
"""

from __future__ import annotations

import ctypes
import importlib
import os

from . import containers, dns, env, files

_NAMESPACES = {"net": 0x40000000, "uts": 0x04000000}

#: Modules the agent (or the standard library under it) imports lazily: the IDNA codec and what it needs for a
#: non-ASCII name, shlex and subprocess for iptables, the codecs a file name or a target's text may need.
#: Imported before placement so that no module is searched for afterwards.
PREIMPORT = (
    "encodings.idna", "encodings.punycode", "encodings.ascii", "encodings.latin_1", "encodings.utf_8",
    "encodings.utf_16", "encodings.utf_32", "stringprep", "unicodedata", "shlex", "subprocess", "signal",
    "selectors", "fcntl", "functools", "ipaddress", "secrets", "select", "errno", "struct", "ctypes",
    "concurrent.futures.thread", "asyncio.unix_events", "asyncio.base_subprocess",
    "mirror_py_agent.dnswire", "mirror_py_agent.addrsort", "mirror_py_agent.resolver", "mirror_py_agent.iptables",
    "mirror_py_agent.incoming",
)


def preimport() -> None:
    """Imports every module of :data:`PREIMPORT` and warms what imports on first use (IDNA tables)."""
    for name in PREIMPORT:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional module this Python lacks (a stripped image): nothing to import later
            continue
    "mirror-py-ß.example".encode("idna")


def find_pid(container_id: str) -> int:
    """The host PID of the container's init (:func:`containers.init_pid`: by the exact cgroup name the
    container's runtime gives it, never a monitor such as CRI-O's conmon named after the same ID)."""
    return containers.init_pid(container_id)


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
        if name == "mnt":
            raise ValueError("the agent never enters the target's mount namespace: it would run the target's "
                             "code with the agent's privilege (files are read through /proc/<pid>/root)")
        if name not in _NAMESPACES:
            raise ValueError(f"unknown namespace {name!r}")
    fds = [(name, os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY)) for name in namespaces]
    try:
        for name, fd in fds:
            _setns(fd, _NAMESPACES[name])
    finally:
        for _, fd in fds:
            os.close(fd)


def place(args: dict) -> dict:
    """``{"container_id" | "pid", "enter": [...], "environ": bool, "files": bool, "resolver": "root" | "libc"}``:
    the placement. ``resolver: root`` (job pods, ``pid/`` targets) answers names from the target's resolver
    files through its root; ``libc`` (ephemeral containers, which share the pod's files) keeps glibc."""
    preimport()
    pid = args.get("pid")
    if args.get("container_id"):
        pid = find_pid(str(args["container_id"]))
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise ValueError("place needs a container_id or a pid")
    namespaces = args.get("enter") or []
    if not isinstance(namespaces, list):
        raise TypeError("enter must be a list of namespace names")
    how = args.get("resolver", "libc")
    if how not in ("libc", "root"):
        raise ValueError(f"resolver must be 'libc' or 'root', not {how!r}")
    result: dict = {"pid": pid}
    if args.get("environ"):
        result["environ"] = env.read_environ({"pid": pid})
    # Roots are opened before entering, and only when needed: an agent given no right to read the target
    # (an ephemeral container without SYS_PTRACE) must not try.
    serve_files = bool(args.get("files", True))
    root = files.Root(f"/proc/{pid}/root") if serve_files or how == "root" else None
    if serve_files and root is not None:
        # MIRROR_PY_AGENT_FS_ROOT names a directory of the target to serve as the root instead (tests use it
        # to build a jail); it is found inside the target's root like any path.
        inner = os.environ.get(files.ROOT_ENV)
        files.set_root(files.Root.inside(root, inner) if inner else files.Root(f"/proc/{pid}/root"))
    if namespaces:
        enter(pid, namespaces)
    if how == "root" and root is not None:
        dns.use_root(root.read_small, root.stat)
    elif root is not None:
        root.close()
    return result
