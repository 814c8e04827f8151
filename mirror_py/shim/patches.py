"""The interposed surface, declared as data, with symmetric install and uninstall.

Each row names where a function lives and the factory that wraps the original (by name, so that installing
one surface imports only its own modules). Installing records exactly what was there — including whether the
attribute was the owner's own or inherited — so uninstalling puts back the very same objects (tested by
identity).
"""

from __future__ import annotations

import sys
from typing import Any, Callable, NamedTuple


class Patch(NamedTuple):
    module: str
    owner: str | None  # a class in the module, or None for a module-level function
    name: str
    factory: str  # "shim_module.function" that wraps the original; imported only when the row is installed
    loaded_only: bool = False  # patch only when the module is already imported (never import it for this)


class Alias(NamedTuple):
    """A copy of a patched function that another module takes at its own import, such as 3.13's
    ``glob._StringGlobber.scandir = staticmethod(os.scandir)`` (which ``pathlib.Path.glob`` uses) or 3.10's
    ``pathlib._NormalAccessor.stat = os.stat``. A module imported before the shim keeps the original there, so
    the copy follows its source: the source's replacement while the surface is installed, the original after.
    In a class it is stored as a staticmethod, since a Python function there would bind like a method where
    the builtin did not. A row whose module or attribute this Python lacks is skipped; a module not yet
    imported is handled when it is (never imported for this)."""

    module: str
    owner: str | None  # a class in the module, or None for a module-level name
    name: str
    source: str  # "module.name" of the patched function it copies, a row of the same surface


SOCKET_SURFACE: tuple[Patch, ...] = (
    # socket.socket inherits these from the C type, which cannot be changed: they are set on the Python class.
    # __init__ is the socket class's own: socket objects made on an existing descriptor join its entry.
    Patch("socket", "socket", "__init__", "net.make_init"),
    Patch("socket", "socket", "connect", "net.make_connect"),
    Patch("socket", "socket", "connect_ex", "net.make_connect_ex"),
    Patch("socket", "socket", "getpeername", "net.make_getpeername"),
    Patch("socket", "socket", "getsockname", "net.make_getsockname"),
    # SO_ERROR of a non-blocking connect in flight gives the target's errno, not the kernel's stand-in.
    Patch("socket", "socket", "getsockopt", "nbconnect.make_getsockopt"),
    Patch("socket", "socket", "sendto", "net.make_sendto"),
    Patch("socket", "socket", "sendmsg", "net.make_sendmsg"),
    Patch("socket", "socket", "recvfrom", "net.make_recvfrom"),
    Patch("socket", "socket", "recvfrom_into", "net.make_recvfrom_into"),
    Patch("socket", "socket", "recvmsg", "net.make_recvmsg"),
    Patch("socket", "socket", "_real_close", "net.make_real_close"),
    Patch("socket", "socket", "bind", "incoming.make_bind"),
    Patch("socket", "socket", "listen", "incoming.make_listen"),
    Patch("socket", "socket", "accept", "incoming.make_accept"),
    Patch("socket", None, "getaddrinfo", "dns.make_getaddrinfo"),
    Patch("socket", None, "gethostbyname", "dns.make_gethostbyname"),
    Patch("socket", None, "gethostbyname_ex", "dns.make_gethostbyname_ex"),
    Patch("socket", None, "gethostbyaddr", "dns.make_gethostbyaddr"),
    Patch("socket", None, "getnameinfo", "dns.make_getnameinfo"),
    Patch("socket", None, "gethostname", "dns.make_gethostname"),
)

# The host's name: os.uname is patched at start-up (os is always there), and platform's cached uname is dropped
# when platform was imported before the shim, so that all three spellings of the name give the pod's.
HOST_SURFACE: tuple[Patch, ...] = (
    Patch("os", None, "uname", "host.make_uname"),
    Patch("platform", None, "_uname_cache", "host.drop_platform_cache", loaded_only=True),
)

# asyncio resolves names in its thread pool, where a local block (a context variable of the calling task) is not
# seen: these carry the block there. Installed by the first local block entered while asyncio is imported
# (scope.py), so that programs without local blocks never pay for it, and asyncio is never imported for it.
ASYNCIO_SURFACE: tuple[Patch, ...] = (
    Patch("asyncio.base_events", "BaseEventLoop", "getaddrinfo", "dns.make_loop_getaddrinfo"),
    Patch("asyncio.base_events", "BaseEventLoop", "getnameinfo", "dns.make_loop_getnameinfo"),
)

# C extensions: imports of extension modules pass through here, so the C-level layer (clayer.py, got.py) starts
# when the first one from outside the standard library is loaded, and start-up pays nothing for it.
C_LOADING_SURFACE: tuple[Patch, ...] = (
    Patch("_imp", None, "create_dynamic", "clayer.make_create_dynamic"),
)

# Files: builtins/io/os are imported before any app code runs, so this surface is installed with the shim itself.
# os.path.exists/isfile/isdir/getsize/getmtime/islink, os.walk, glob, pathlib and shutil call these names at
# call time, so they follow. io.open_code (imports) is deliberately absent.
FILE_SURFACE: tuple[Patch | Alias, ...] = (
    Patch("builtins", None, "open", "files.make_open"),
    Patch("io", None, "open", "files.make_open"),
    Patch("os", None, "open", "files.make_os_open"),
    Patch("os", None, "close", "files.make_close"),
    Patch("os", None, "fsync", "files.make_fsync"),
    Patch("os", None, "stat", "files.make_stat"),
    Patch("os", None, "lstat", "files.make_lstat"),
    Patch("os", None, "fstat", "files.make_fstat"),
    Patch("os", None, "access", "files.make_access"),
    Patch("os", None, "listdir", "files.make_listdir"),
    Patch("os", None, "scandir", "files.make_scandir"),
    Patch("os", None, "readlink", "files.make_readlink"),
    Patch("os", None, "mkdir", "files.make_mkdir"),
    Patch("os", None, "rmdir", "files.make_rmdir"),
    Patch("os", None, "unlink", "files.make_unlink"),
    Patch("os", None, "remove", "files.make_remove"),
    Patch("os", None, "rename", "files.make_rename"),
    Patch("os", None, "replace", "files.make_replace"),
    Patch("os", None, "truncate", "files.make_truncate"),
    Patch("os", None, "chmod", "files.make_chmod"),
    Patch("os", None, "utime", "files.make_utime"),
    Patch("os", None, "symlink", "files.make_symlink"),
    Patch("os", None, "listxattr", "files.make_listxattr"),
    Patch("os", None, "getxattr", "files.make_getxattr"),
    Patch("posixpath", None, "realpath", "files.make_realpath"),
    # The same decisions for the rest of the surface: each call follows fs.mode like its sibling above.
    Patch("io", None, "FileIO", "files.make_fileio"),
    Patch("os", None, "fdatasync", "files.make_fsync"),
    Patch("os", None, "chown", "file_meta.make_chown"),
    Patch("os", None, "lchown", "file_meta.make_lchown"),
    Patch("os", None, "fchown", "file_meta.make_fchown"),
    Patch("os", None, "fchmod", "file_meta.make_fchmod"),
    Patch("os", None, "ftruncate", "file_meta.make_ftruncate"),
    Patch("os", None, "link", "file_meta.make_link"),
    Patch("os", None, "mkfifo", "file_meta.make_mkfifo"),
    Patch("os", None, "mknod", "file_meta.make_mknod"),
    Patch("os", None, "setxattr", "file_meta.make_setxattr"),
    Patch("os", None, "removexattr", "file_meta.make_removexattr"),
    Patch("os", None, "statvfs", "file_meta.make_statvfs"),
    Patch("os", None, "fstatvfs", "file_meta.make_fstatvfs"),
    Patch("os", None, "chdir", "file_meta.make_chdir"),
    Patch("os", None, "fchdir", "file_meta.make_fchdir"),
    # Copies taken at import: Python 3.13's glob (pathlib.Path.glob/rglob go through it) and 3.10's pathlib.
    Alias("glob", "_StringGlobber", "lstat", "os.lstat"),
    Alias("glob", "_StringGlobber", "scandir", "os.scandir"),
    *(Alias("pathlib", "_NormalAccessor", name, f"os.{name}")
      for name in ("stat", "listdir", "scandir", "chmod", "mkdir", "unlink", "link", "rmdir", "rename", "replace",
                   "symlink", "readlink")),
    Alias("pathlib", "_NormalAccessor", "open", "io.open"),
    Alias("pathlib", "_NormalAccessor", "realpath", "posixpath.realpath"),
)

# shutil and others test membership of the function objects in these sets (shutil.rmtree picks its fd-based
# walk that way): a replacement takes the original's place in each set it was in.
_OS_SETS = ("supports_dir_fd", "supports_fd", "supports_follow_symlinks", "supports_effective_ids")

_MISSING = object()


class _Saved(NamedTuple):
    obj: Any
    name: str
    own: Any  # the owner's own attribute before patching, or _MISSING when it was inherited
    replacement: Any
    sets: tuple  # the os.supports_* sets the replacement was added to
    alias: bool = False  # an Alias row: put back only if nobody changed it since


_installed: dict[int, list[_Saved]] = {}
_order: list[int] = []
# Per installed surface: "module.name" of each patched function -> (original, replacement), for its aliases.
_sources: dict[int, dict[str, tuple[Any, Any]]] = {}
# Aliases in modules not imported yet: module name -> [(surface key, row)], applied by _AliasImportHook.
_pending: dict[str, list[tuple[int, Alias]]] = {}
_hook: list[Any] = []


def _owner(patch: Patch) -> Any:
    module = sys.modules[patch.module] if patch.module in sys.modules else __import__(patch.module)
    return getattr(module, patch.owner) if patch.owner else module


def _factory(spec: str) -> Callable[[Any], Any]:
    # Imported at install time: the file surface goes in at start-up and must not import socket with it.
    module, _, name = spec.rpartition(".")
    return getattr(__import__(f"{__package__}.{module}", fromlist=[name]), name)


def install(surface: tuple[Patch | Alias, ...] = SOCKET_SURFACE) -> None:
    """Installs ``surface`` once; a second call for the same surface does nothing."""
    key = id(surface)
    if key in _installed:
        return
    saved: list[_Saved] = []
    _installed[key] = saved
    _order.append(key)
    sources: dict[str, tuple[Any, Any]] = {}
    _sources[key] = sources
    for patch in surface:
        if isinstance(patch, Alias):
            if patch.module in sys.modules:
                _alias(key, patch)
            else:
                _pending.setdefault(patch.module, []).append((key, patch))
                _watch_imports()
            continue
        if patch.loaded_only and patch.module not in sys.modules:
            continue
        obj = _owner(patch)
        if not hasattr(obj, patch.name):
            continue  # a platform without this function (listxattr on some systems)
        own = vars(obj).get(patch.name, _MISSING)
        original = getattr(obj, patch.name)
        replacement = _factory(patch.factory)(original)
        sets: list = []
        if patch.module == "os" and patch.owner is None:
            for set_name in _OS_SETS:
                members = getattr(obj, set_name, None)
                if isinstance(members, set) and original in members:
                    members.add(replacement)
                    sets.append(members)
        setattr(obj, patch.name, replacement)
        saved.append(_Saved(obj, patch.name, own, replacement, tuple(sets)))
        if patch.owner is None:
            sources[f"{patch.module}.{patch.name}"] = (original, replacement)


def _alias(key: int, row: Alias) -> None:
    """Points one copy at its source's replacement, remembering what puts it back."""
    module = sys.modules.get(row.module)
    obj = getattr(module, row.owner, None) if row.owner and module is not None else module
    source = _sources.get(key, {}).get(row.source)
    if obj is None or source is None:
        return
    raw = vars(obj).get(row.name, _MISSING)
    wrapped = isinstance(raw, staticmethod)
    found = raw.__func__ if wrapped else raw
    original, replacement = source
    if found is original:
        restore = raw
    elif found is replacement:  # imported while installed: it copied the replacement itself
        restore = staticmethod(original) if wrapped else original
    else:
        return  # someone else's function: not ours to change
    new = staticmethod(replacement) if row.owner else replacement
    setattr(obj, row.name, new)
    _installed[key].append(_Saved(obj, row.name, restore, new, (), alias=True))


class _AliasImportHook:
    """Applies the aliases of a module when it is imported after the shim (3.10's pathlib then holds the
    replacement as a plain function, which would bind as a method)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        if name not in _pending:
            return None
        from . import _LoaderProxy, spec_from_other_finders

        spec = spec_from_other_finders(self, name, path, target)
        if spec is None:
            return None
        if spec.loader is None:
            return spec

        spec.loader = _LoaderProxy(spec.loader, lambda: _apply_pending(name))
        return spec


def _apply_pending(name: str) -> None:
    for key, row in _pending.pop(name, []):
        if key in _installed:
            _alias(key, row)
    if not _pending:
        _unwatch_imports()


def _watch_imports() -> None:
    if not _hook:
        _hook.append(_AliasImportHook())
        sys.meta_path.insert(0, _hook[0])


def _unwatch_imports() -> None:
    while _hook:
        hook = _hook.pop()
        if hook in sys.meta_path:
            sys.meta_path.remove(hook)


def uninstall() -> None:
    """Puts back every original, surfaces in the reverse order of their installation. Every row is restored
    even if one fails (someone replaced a patched attribute with something that refuses); then the first
    error is raised. Calling it again does nothing."""
    first: BaseException | None = None
    _pending.clear()
    _unwatch_imports()
    while _order:
        key = _order.pop()
        saved = _installed.pop(key)
        _sources.pop(key, None)
        while saved:
            obj, name, own, replacement, sets, alias = saved.pop()
            try:
                for members in sets:
                    members.discard(replacement)
                if alias:
                    if vars(obj).get(name) is replacement:
                        setattr(obj, name, own)
                elif own is _MISSING:
                    if name in vars(obj):
                        delattr(obj, name)
                else:
                    setattr(obj, name, own)
            except Exception as exc:  # the others are still restored
                first = first or exc
    if first is not None:
        raise first


def is_installed(surface: tuple[Patch | Alias, ...] | None = None) -> bool:
    if surface is None:
        return bool(_installed)
    return id(surface) in _installed
