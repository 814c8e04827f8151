"""When the C-level layer starts: armed for free at start-up, active once C code that could network is loaded.

Start-up only arms it: ``_imp.create_dynamic`` (what imports of extension modules call) is wrapped (a row of
:data:`mirror_py.shim.patches.C_LOADING_SURFACE`), and a post-import hook waits for ``ctypes``. Nothing else
happens — no ctypes import, no scan — until an extension module from outside the standard library is
imported or the app imports ctypes (which can load any library). Then :func:`activate` routes the GOT slots
of every loaded object (:mod:`mirror_py.shim.got`), and ``dlopen`` itself is hooked so that later loads,
from Python or from C, are routed before anyone calls into them.

``interpose.c_extensions`` (the session's settings) or ``MIRROR_PY_INTERPOSE_C_EXTENSIONS`` turn it off;
it is available on Linux x86_64 and aarch64 only.
"""

from __future__ import annotations

import os
import sys
from typing import Any

ENV_VAR = "MIRROR_PY_INTERPOSE_C_EXTENSIONS"
_FALSE = ("0", "false", "no", "off")
_TRUE = ("1", "true", "yes", "on")
_state = {"armed": False, "failed": False}
_hook: list[object] = []
_entry_hooks: dict[str, list[object]] = {}  # module -> its post-import hook (FILE_ENTRY_POINTS)
_wrapped: list[tuple[Any, str, Any]] = []  # (class or module, name, what it held itself) of each entry point
_MISSING = object()


def _entry_points() -> tuple:
    from .c_surface import FILE_ENTRY_POINTS

    return FILE_ENTRY_POINTS


def supported() -> bool:
    """Linux x86_64 or aarch64: the machines whose GOT layout and relocation numbers the layer knows."""
    machine = getattr(sys.implementation, "_multiarch", "").split("-", 1)[0]
    return sys.platform.startswith("linux") and machine in ("x86_64", "aarch64")


def enabled() -> bool:
    """Whether C extensions are to be interposed: the variable wins, then ``interpose.c_extensions``."""
    raw = os.environ.get(ENV_VAR, "").strip().lower()
    if raw in _FALSE:
        return False
    if raw not in _TRUE:
        if raw:
            _say(f"{ENV_VAR}={raw!r} is not a boolean (allowed: 1/0, true/false, yes/no, on/off); "
                 "using interpose.c_extensions")
        from . import settings

        if not settings.get().c_extensions:
            return False
    return supported()


def _say(text: str) -> None:
    sys.stderr.write(f"mirror-py: {text}\n")


def _stdlib_dirs() -> tuple[str, ...]:
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    dirs = []
    for prefix in dict.fromkeys((sys.base_exec_prefix, sys.base_prefix)):
        dirs.append(os.path.join(prefix, getattr(sys, "platlibdir", "lib"), version, "lib-dynload") + os.sep)
    return tuple(dirs)


def foreign(origin: object) -> bool:
    """An extension module from outside the standard library (site-packages, the app's own)."""
    if not isinstance(origin, str):
        return False
    # A plain prefix test: the import system gives lib-dynload's own path, and os.path.realpath is the file
    # surface's here (it may ask the target).
    return not origin.startswith(_stdlib_dirs())


def files_routed() -> bool:
    """Whether files are the target's (``fs.mode`` not local): then the C file surface is routed too."""
    from . import settings

    return str(settings.get().fs.get("mode", "read")) != "local"


def _paths(args: tuple, kwargs: dict) -> list[str]:
    """The arguments of a call that may be file names (an ``sqlite3`` ``file:`` URI gives its path)."""
    out = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "surrogateescape")
        if not isinstance(value, str) or not value or "\n" in value or len(value) > 4096:
            continue  # not a name: a number, a context, PEM text given as cadata
        if value.startswith("file:"):
            value = value[5:].split("?", 1)[0].split("#", 1)[0]
            if value.startswith("//"):
                value = "/" + value[2:].partition("/")[2]
        out.append(value)
    return out


def names_a_target_file(args: tuple, kwargs: dict) -> bool:
    """Does the call name a file that the target serves (or that its rules declare missing)?"""
    from . import files

    for path in _paths(args, kwargs):
        try:
            if files._remote_path(path, False) is not None:
                return True
        except OSError:
            return True  # declared missing by the rules: the C call must see it as missing
    return False


def _entry(fn: Any) -> Any:
    def entry(*args, **kwargs):
        if not _state["failed"] and files_routed() and names_a_target_file(args, kwargs):
            activate()
        return fn(*args, **kwargs)

    entry.__wrapped__ = fn  # type: ignore[attr-defined]
    return entry


def _wrap_entry_points(module_name: str) -> None:
    from .c_surface import FILE_ENTRY_POINTS

    module = sys.modules.get(module_name)
    for name, owner, function in FILE_ENTRY_POINTS:
        target = getattr(module, owner, None) if owner else module
        if name != module_name or target is None or not hasattr(target, function):
            continue
        own = vars(target).get(function, _MISSING)
        setattr(target, function, _entry(getattr(target, function)))
        _wrapped.append((target, function, own))


def _unwrap_entry_points() -> None:
    while _wrapped:
        target, function, own = _wrapped.pop()
        if own is _MISSING:
            delattr(target, function)
        else:
            setattr(target, function, own)


def make_create_dynamic(orig: object) -> object:
    """Activates the layer after the first import of an extension module from outside the standard library."""

    def create_dynamic(spec, *args):
        module = orig(spec, *args)
        if _state["failed"]:
            return module
        if foreign(getattr(spec, "origin", None)):
            activate()
        return module

    return create_dynamic


def arm() -> None:
    """At start-up: cheap. Where the layer is unsupported this does nothing (the import warnings say why)."""
    if _state["armed"] or not supported():
        return
    _state["armed"] = True
    from . import patches

    patches.install(patches.C_LOADING_SURFACE)
    from . import on_import

    on_import("ctypes", activate, _hook)  # ctypes can load any library: the layer is active once it is imported
    for module_name in dict.fromkeys(entry[0] for entry in _entry_points()):
        hooks = _entry_hooks.setdefault(module_name, [])
        on_import(module_name, lambda m=module_name: _wrap_entry_points(m), hooks)
    for module in list(sys.modules.values()):  # extension modules imported before the shim
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and file.endswith(".so") and foreign(file):
            activate()
            break


def activate() -> None:
    """Routes the C surface of every loaded object now and of every object loaded later."""
    if _state["failed"] or _state.get("activating"):
        return  # off, or re-entered: got.py's own import of ctypes passes the ctypes hook
    _state["activating"] = True
    try:
        if not enabled():
            _state["failed"] = True  # off: never asked again in this process
            return
        import atexit

        from . import got

        if got.is_active():
            got.scan()
            return
        got.install()
        atexit.register(got.at_exit)
    except Exception as exc:  # never stop the app: say what is not interposed
        _state["failed"] = True
        _say(f"C extensions are not interposed in this process: {exc}")
    finally:
        _state["activating"] = False


def after_fork_in_child() -> None:
    got = sys.modules.get(__package__ + ".got")
    if got is not None:
        got.after_fork_in_child()


def uninstall() -> None:
    """Symmetric with :func:`arm` and :func:`activate`: every slot back, the wrappers removed."""
    from . import remove_hooks

    remove_hooks(_hook)
    for hooks in _entry_hooks.values():
        remove_hooks(hooks)
    _unwrap_entry_points()
    _state["armed"] = False
    _state["failed"] = False
    got = sys.modules.get(__package__ + ".got")
    if got is not None:
        got.uninstall()
