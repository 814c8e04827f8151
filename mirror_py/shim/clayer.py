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

ENV_VAR = "MIRROR_PY_INTERPOSE_C_EXTENSIONS"
_FALSE = ("0", "false", "no", "off")
_TRUE = ("1", "true", "yes", "on")
_state = {"armed": False, "failed": False}
_hook: list[object] = []


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


def opens_files(name: object) -> bool:
    """A standard-library module whose library opens files by name from C (libsqlite3, OpenSSL), while files
    are the target's: its C opens must follow the file rules too, so it activates the layer."""
    from .c_surface import FILE_MODULES

    return name in FILE_MODULES and files_routed()


def make_create_dynamic(orig: object) -> object:
    """Activates the layer after the first import of an extension module from outside the standard library,
    or of one whose library opens files from C."""

    def create_dynamic(spec, *args):
        module = orig(spec, *args)
        if _state["failed"]:
            return module
        if foreign(getattr(spec, "origin", None)) or opens_files(getattr(spec, "name", None)):
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
    for name, module in list(sys.modules.items()):  # extension modules imported before the shim
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and file.endswith(".so") and (foreign(file) or opens_files(name)):
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
    _state["armed"] = False
    _state["failed"] = False
    got = sys.modules.get(__package__ + ".got")
    if got is not None:
        got.uninstall()
