"""The shim: interposes on the app's interpreter so its network and DNS go through the session.

``install()`` runs from sitecustomize before the app's first line. It stays cheap: if ``socket`` is not
imported yet, the patches are applied the moment it is (an import hook), and nothing talks to the session until
the app's first remote operation.
"""

from __future__ import annotations

import errno
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds: never imported at start-up
    from typing import Any

_hook: list[object] = []
_watch: list[object] = []
_fork_registered: list[bool] = []


class _LoaderProxy:
    """Runs the real loader, then patches: the module is complete before anyone can use it."""

    def __init__(self, loader: object, after: object) -> None:
        self._loader = loader
        self._after = after

    def create_module(self, spec: object) -> object:
        return self._loader.create_module(spec)

    def exec_module(self, module: object) -> None:
        self._loader.exec_module(module)
        self._after()

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)


def spec_from_other_finders(hook: object, name: str, path: object, target: object) -> object:
    """The spec the import system would find without ``hook``: post-import hooks wrap its loader."""
    for finder in sys.meta_path:
        if finder is hook or not hasattr(finder, "find_spec"):
            continue
        spec = finder.find_spec(name, path, target)
        if spec is not None:
            return spec
    return None


class PostImportHook:
    """Runs ``after`` once module ``name`` is first imported (the module complete first), then leaves
    ``sys.meta_path``: patching on first import keeps start-up free of the module's own cost in programs that
    never import it."""

    def __init__(self, name: str, after: object, hooks: list[object]) -> None:
        self.name = name
        self.after = after
        self.hooks = hooks  # the list that holds this hook while it is installed

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        if name != self.name:
            return None
        spec = spec_from_other_finders(self, name, path, target)
        if spec is None or spec.loader is None:
            return spec
        remove_hooks(self.hooks)
        spec.loader = _LoaderProxy(spec.loader, self.after)
        return spec


def on_import(name: str, after: object, hooks: list[object]) -> None:
    """``after()`` now if ``name`` is imported already, else on its first import (one hook, kept in ``hooks``)."""
    if name in sys.modules:
        after()  # type: ignore[operator]
    elif not hooks:
        hook = PostImportHook(name, after, hooks)
        hooks.append(hook)
        sys.meta_path.insert(0, hook)


def remove_hooks(hooks: list[object]) -> None:
    while hooks:
        hook = hooks.pop()
        if hook in sys.meta_path:
            sys.meta_path.remove(hook)


def _patch() -> None:
    from . import bypass, patches

    patches.install()
    bypass.install()


def _after_fork_in_child() -> None:
    rpc = sys.modules.get(__name__ + ".rpc")
    if rpc is not None:
        rpc.reset_after_fork()
    nbconnect = sys.modules.get(__name__ + ".nbconnect")
    if nbconnect is not None:
        nbconnect.reset_after_fork()
    files = sys.modules.get(__name__ + ".files")
    if files is not None:
        files.after_fork_in_child()
    routes = sys.modules.get(__name__ + ".routes")
    if routes is not None:
        routes.forget_all()
    listeners = sys.modules.get(__name__ + ".local_listeners")
    if listeners is not None:
        listeners.forget_all()  # "this process" is another one now
    clayer = sys.modules.get(__name__ + ".clayer")
    if clayer is not None:
        clayer.after_fork_in_child()  # a Python child stays interposed from C too


def _watch_c_networking() -> None:
    if _watch:
        return
    from .limits import C_NETWORKING, CNetworkingWatch

    watch = CNetworkingWatch()
    for name in C_NETWORKING:
        if name in sys.modules:  # imported before the shim: say so now
            watch.find_spec(name)
    _watch.append(watch)
    sys.meta_path.insert(0, watch)


def _install_files() -> None:
    """The file surface goes in at once (builtins, io and os are always there) unless the session turned
    files off; deciding reads the settings, which costs a JSON parse only when files are configured."""
    if not _files_wanted():
        return
    from . import patches

    patches.install(patches.FILE_SURFACE)


def _arm_c_layer() -> None:
    """Arms the C-level layer (clayer.py) unless it is turned off, decided without parsing the settings: the
    variable, then the session's '"c_extensions": false' (written by mirror_py.config.shim_settings)."""
    raw = os.environ.get("MIRROR_PY_INTERPOSE_C_EXTENSIONS", "").strip().lower()
    if raw in ("0", "false", "no", "off"):
        return
    if not raw and '"c_extensions": false' in os.environ.get("MIRROR_PY_SHIM_SETTINGS", ""):
        return
    from . import clayer

    clayer.arm()


def _install_host() -> None:
    from . import patches

    patches.install(patches.HOST_SURFACE)


def _files_wanted() -> bool:
    # Read without parsing the JSON (start-up stays free of the json import): the session writes
    # '"fs": {"mode": "..."' itself; anything unexpected falls back to the full parse.
    raw = os.environ.get("MIRROR_PY_SHIM_SETTINGS", "")
    at = raw.find('"fs": {"mode": "')
    if at >= 0:
        return not raw.startswith("local", at + 16)
    if '"fs"' not in raw:
        return False  # an older session, or settings written by hand without files
    from . import settings

    return settings.get().fs.get("mode", "read") != "local"


def install() -> None:
    """Interposes now (socket already imported) or when socket is first imported; files at once."""
    _watch_c_networking()
    _install_host()
    _arm_c_layer()
    _install_files()
    if not _fork_registered:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_registered.append(True)
    on_import("socket", _patch, _hook)


def uninstall() -> None:
    """Ends interposition in this process; what ``MirrorSession.close()`` runs.

    Total and idempotent, whatever was loaded (an app that never imported socket, ``fs.mode = "local"``) and
    however often it is called: writable remote files are written back to the target first, so no write made
    before this call is lost; then every patched name is put back exactly as it was, the registries are
    emptied and the connections to the session closed, so that a later ``connect()`` starts clean. Files the
    app still holds afterwards are local memory copies. Every step runs even when one fails; then the first
    failure is raised (a write that never reached the target must not pass silently).

    To run a block locally without any of this, use :func:`mirror_py.shim.scope.local`.
    """
    failures: list[BaseException] = []

    def step(fn: Any) -> Any:
        try:
            return fn()
        except Exception as exc:  # collected; the first one is raised at the end
            failures.append(exc)
            return None

    step(lambda: remove_hooks(_hook))
    step(_remove_watch)
    clayer = _module("clayer")
    if clayer is not None:
        step(clayer.uninstall)
    bypass = _module("bypass")
    if bypass is not None:
        step(bypass.uninstall)
    lost = _module("files")
    lost = step(lost.flush_all) if lost is not None else None
    patches = _module("patches")
    if patches is not None:
        step(patches.uninstall)
    for name in ("net", "incoming", "files", "resolved", "local_listeners"):
        module = _module(name)
        if module is not None:
            step(module.forget_all)
    host = _module("host")
    if host is not None:
        step(host.forget)
    rpc = _module("rpc")
    if rpc is not None:
        step(rpc.disconnect_all)
    if lost:
        names = ", ".join(dict.fromkeys(str(name) for name, _ in lost))
        first = lost[0][1]
        why = (getattr(first, "strerror", None) or str(first)).removeprefix("mirror-py: ")
        lost_writes = OSError(f"mirror-py: writes to {names} did not reach the target: {why}")
        lost_writes.errno = getattr(first, "errno", None) or errno.EIO
        raise lost_writes from first
    if failures:
        raise failures[0]


def _module(name: str) -> Any:
    """A shim module if this process loaded it (uninstall must not import what was never used)."""
    return sys.modules.get(f"{__name__}.{name}")


def _remove_watch() -> None:
    while _watch:
        watch = _watch.pop()
        if watch in sys.meta_path:
            sys.meta_path.remove(watch)


def active() -> bool:
    patches = sys.modules.get(__name__ + ".patches")
    return bool(_hook) or (patches is not None and patches.is_installed())
