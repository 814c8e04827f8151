"""Which paths are the target's: the decisions behind every interposed file operation.

A decision is made once per path string and cached, because ``builtins.open`` runs for every open in the
process: the usual case — a path of the Python installation, the venv, the project — costs a dict lookup.
Building the rules (at the first file operation, never at start-up) reads the interpreter's own layout:
``sys.prefix``, ``sys.path``, site-packages, the working directory and the temporary directories.

The order follows the reference tool's: a relative path is local; then the user's ``not_found``,
``read_write``, ``read_only`` and ``local`` lists; then the built-in not-found, remote read-only and local
defaults; then the mode. ``mapping`` rewrites the path before all of it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

LOCAL = 0
REMOTE = 1
NOT_FOUND = 2

#: Kept local whatever the mode: the machine's own software and kernel interfaces. ``/etc`` is deliberately
#: not here — an app's configuration lives there (``/etc/config/app.yaml``), and Python code reads it with
#: ``open()``; what the C library reads in ``/etc`` never passes through the shim anyway.
DEFAULT_LOCAL_DIRS = (
    "/proc", "/sys", "/dev", "/tmp", "/var/tmp", "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin",
    "/opt", "/snap", "/nix", "/home", "/run",
)
#: The interpreter's own kinds of files (code, extension modules, path configuration).
DEFAULT_LOCAL_SUFFIXES = (".py", ".pyc", ".pyo", ".so", ".pth", ".sh", "/pyvenv.cfg")
#: Read from the target even inside a local directory (``/run/secrets`` is under ``/run``).
DEFAULT_REMOTE_DIRS = ("/run/secrets",)
#: Read from the target, written locally: what name resolution in the pod depends on.
DEFAULT_REMOTE_READ_ONLY = ("/etc/resolv.conf", "/etc/hosts", "/etc/hostname")
#: Credentials of the laptop's cloud tools, relative to $HOME: an app in a pod has none of them and falls
#: back to its in-cluster identity, so it must not find the laptop's.
DEFAULT_NOT_FOUND_IN_HOME = (".kube", ".azure", ".config/gcloud")

_CACHE_MAX = 8192


def _norm(path: str) -> str:
    if "//" in path or "/." in path:
        path = os.path.normpath(path)
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/") or "/"
    return path


class _Dirs:
    """A set of directories matched by prefix at component boundaries (no regex on the hot path).

    ``ancestors`` (the parents of the directories, but not their other children) match too: the app
    stats the parents of its own project and venv (``pathlib.Path.resolve``, ``os.makedirs``), and they are
    the laptop's.
    """

    __slots__ = ("exact", "prefixes")

    def __init__(self, dirs: Any, ancestors: Any = ()) -> None:
        clean = set()
        for d in dirs:
            if not d or not isinstance(d, str) or not d.startswith("/"):
                continue
            d = _norm(d)
            if d != "/":
                clean.add(d)
        exact = set(clean)
        for d in ancestors:
            if not d or not isinstance(d, str) or not d.startswith("/"):
                continue
            d = _norm(d)
            while d.count("/") > 1:
                d = d.rsplit("/", 1)[0]
                exact.add(d)
        self.exact = frozenset(exact)
        self.prefixes = tuple(sorted(d + "/" for d in clean))

    def __contains__(self, path: str) -> bool:
        return path in self.exact or path.startswith(self.prefixes)


def _compile(patterns: Any) -> tuple:
    if not patterns:
        return ()
    import re

    return tuple(re.compile(p).search for p in patterns)


def _matches(searches: tuple, path: str) -> bool:
    for search in searches:
        if search(path) is not None:
            return True
    return False


def python_local_dirs() -> list[str]:
    """Everything of this interpreter: installation, venv, import path, site-packages, working directory,
    temporary directories, and mirror-py itself."""
    out: list[str] = []
    for name in ("prefix", "base_prefix", "exec_prefix", "base_exec_prefix"):
        value = getattr(sys, name, None)
        if value:
            out.append(value)
    if sys.executable:
        out.append(os.path.dirname(sys.executable))
        try:
            out.append(os.path.dirname(os.path.realpath(sys.executable)))
        except OSError:
            pass
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = ""
    for entry in sys.path:
        if isinstance(entry, str):
            out.append(entry if entry else cwd)
    site = sys.modules.get("site")
    if site is not None:
        for fn in ("getsitepackages", "getusersitepackages"):
            try:
                found = getattr(site, fn)()
            except Exception:
                continue
            out.extend([found] if isinstance(found, str) else list(found))
    out.append(cwd)
    for var in ("TMPDIR", "TEMP", "TMP"):
        value = os.environ.get(var)
        if value:
            out.append(value)
    out.append("/usr/tmp")
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None and getattr(tempfile, "tempdir", None):
        out.append(tempfile.tempdir)
    for var in ("MIRROR_PY_SHIM_LIB",):
        value = os.environ.get(var)
        if value:
            out.append(value)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out.append(os.path.join(here, "mirror_py"))
    out.append(os.path.join(here, "mirror_py_agent"))
    out.append(os.path.join(here, "sitecustomize_shim"))
    return out


class FileRules:
    """Decides, per absolute path, whether a read or a write is local, remote or made to fail as missing."""

    def __init__(self, data: dict | None = None, *, local_dirs: Any = None, home: str | None = None) -> None:
        data = data or {}
        self.mode = str(data.get("mode", "read"))
        if self.mode not in ("local", "read", "write"):
            raise ValueError(f"fs.mode must be local, read or write, not {self.mode!r}")
        self.enabled = self.mode != "local"
        self.user_not_found = _compile(data.get("not_found"))
        self.user_read_write = _compile(data.get("read_write"))
        self.user_read_only = _compile(data.get("read_only"))
        self.user_local = _compile(data.get("local"))
        self._user = bool(self.user_not_found or self.user_read_write or self.user_read_only or self.user_local)
        mapping = data.get("mapping") or []
        if isinstance(mapping, dict):
            mapping = list(mapping.items())
        if mapping:
            import re

            self.mapping = tuple((re.compile(p), r) for p, r in mapping)
        else:
            self.mapping = ()
        if home is None:
            home = os.environ.get("HOME") or ""
        self.home = _norm(home) if home.startswith("/") else ""
        self.not_found = _Dirs([os.path.join(self.home, d) for d in DEFAULT_NOT_FOUND_IN_HOME] if self.home else [])
        self.remote_dirs = _Dirs(DEFAULT_REMOTE_DIRS)
        self.remote_read_only = frozenset(DEFAULT_REMOTE_READ_ONLY)
        self._python = local_dirs is None
        self._syspath: tuple = ()
        extra = list(local_dirs) if local_dirs is not None else python_local_dirs()
        if self._python:
            self._syspath = tuple(sys.path)
        if self.home:
            extra.append(self.home)
        self.local_dirs = _Dirs(list(DEFAULT_LOCAL_DIRS) + extra, ancestors=extra)
        self._cache: dict[str, tuple[int, int, str]] = {}

    # --------------------------------------------------------------------------------------- deciding
    def map(self, path: str) -> str:
        for pattern, replacement in self.mapping:
            if pattern.search(path) is not None:
                return pattern.sub(replacement, path, count=1)
        return path

    def lookup(self, path: str) -> tuple[int, int, str]:
        """``(read decision, write decision, path to use)`` for a path string, cached."""
        entry = self._cache.get(path)
        if entry is None:
            entry = self._decide(path)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[path] = entry
        return entry

    def decide(self, path: str, write: bool = False) -> int:
        entry = self.lookup(path)
        return entry[1] if write else entry[0]

    def writes_remote(self, mapped: str) -> bool:
        """Whether writes to ``mapped`` (a path already mapped, as the agent is given it) go to the target."""
        return self.enabled and mapped.startswith("/") and self._one(_norm(mapped), True) == REMOTE

    def _decide(self, path: str) -> tuple[int, int, str]:
        if not self.enabled or not path.startswith("/"):
            return (LOCAL, LOCAL, path)
        mapped = self.map(path) if self.mapping else path
        if not mapped.startswith("/"):
            return (LOCAL, LOCAL, mapped)
        norm = _norm(mapped)
        read = self._one(norm, False)
        write = self._one(norm, True)
        if (read != LOCAL or write != LOCAL) and self._python and self._syspath_changed(norm):
            # An import path added at run time is the app's code too.
            return (LOCAL, LOCAL, mapped)
        return (read, write, mapped)

    def _one(self, path: str, write: bool) -> int:
        if self._user:
            if _matches(self.user_not_found, path):
                return NOT_FOUND
            if _matches(self.user_read_write, path):
                return REMOTE
            if _matches(self.user_read_only, path):
                return LOCAL if write else REMOTE
            if _matches(self.user_local, path):
                return LOCAL
        if path in self.not_found:
            return NOT_FOUND
        if path in self.remote_read_only:
            return LOCAL if write else REMOTE
        if path not in self.remote_dirs and (path in self.local_dirs or path.endswith(DEFAULT_LOCAL_SUFFIXES)):
            return LOCAL
        if self.mode == "write":
            return REMOTE
        return LOCAL if write else REMOTE

    def _syspath_changed(self, path: str) -> bool:
        """True when ``path`` is under an entry added to ``sys.path`` since the rules were built."""
        current = tuple(sys.path)
        if current == self._syspath:
            return False
        added = [p for p in current if isinstance(p, str) and p not in self._syspath]
        return path in _Dirs(added)
