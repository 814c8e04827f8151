"""File operations under mirror-py that report how many requests the session sent to its agent for each.

Run by tests/e2e/test_file_round_trips.py as ``file_round_trips_app.py WHAT [ARG...]``; prints one JSON line
``{"asked": [...], "results": [...]}``: the session's count of ``fs`` requests before the first step and
after each one, and what each step returned (for parity with a run inside the pod).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable


def asked() -> int:
    """``fs`` requests the session has sent to its agent so far (each one a round trip)."""
    from mirror_py.shim import rpc

    return int(rpc.call({"op": "info"})["ok"].get("requests", {}).get("fs", 0))


def _stat(st: os.stat_result) -> list:
    return [st.st_mode, st.st_size, st.st_ino, st.st_mtime_ns, st.st_nlink, st.st_uid]


def _entries(path: str) -> list:
    with os.scandir(path) as it:
        return sorted([e.name, e.is_dir(), e.is_file(), e.is_symlink(), _catch(lambda e=e: _stat(e.stat())),
                       _stat(e.stat(follow_symlinks=False))] for e in it)


def _catch(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except OSError as exc:
        return f"{type(exc).__name__} {exc.errno}"


STEPS: dict[str, Callable[..., Any]] = {
    "read": lambda p: open(p, "rb").read().hex(),
    "read_text": lambda p: open(p).read(),
    "read_seek": lambda p, off: _seek(p, int(off)),
    "scandir": _entries,
    "walk": lambda p: [[top, sorted(dirs), sorted(files)] for top, dirs, files in os.walk(p)],
    "walk_up": lambda p: [[top, sorted(dirs), sorted(files)] for top, dirs, files in os.walk(p, topdown=False)],
    "stat": lambda p: _catch(lambda: _stat(os.stat(p))),
    "lstat": lambda p: _catch(lambda: _stat(os.lstat(p))),
    "exists": lambda p: os.path.exists(p),
    "listdir": lambda p: _catch(lambda: sorted(os.listdir(p))),
    "write": lambda p, text: _write(p, "w", text),
    "append": lambda p, text: _write(p, "a", text),
    "rw": lambda p, text: _write(p, "r+", text),
    "unlink": lambda p: os.unlink(p),
    "mkdir": lambda p: os.mkdir(p),
    "rename": lambda a, b: os.rename(a, b),
    "chmod": lambda p, mode: os.chmod(p, int(mode, 8)),
    "utime": lambda p, ns: os.utime(p, ns=(int(ns), int(ns))),
    "truncate": lambda p, n: os.truncate(p, int(n)),
    "sleep": lambda s: time.sleep(float(s)),
    "behind": lambda pid, p, text: _behind(pid, p, text),
}


def _behind(pid: str, path: str, text: str) -> None:
    """Changes a file of the pod the way its own processes would: through the pod's root as this machine
    sees it (/proc/PID/root is a local path), so mirror-py knows nothing of it."""
    with open(f"/proc/{pid}/root{path}", "a") as f:
        f.write(text)


def _seek(path: str, offset: int) -> list:
    with open(path, "rb") as f:
        head = f.read(10)
        f.seek(offset)
        mid = f.read(10)
        f.seek(-5, os.SEEK_END)
        return [head.hex(), mid.hex(), f.read().hex(), f.tell()]


def _write(path: str, mode: str, text: str) -> None:
    with open(path, mode) as f:
        f.write(text)


def main() -> None:
    """Arguments are steps ``name:arg:arg``; the counts are taken only under mirror-py (``--native`` runs the
    same steps inside the pod for parity)."""
    native = sys.argv[1] == "--native"
    steps = sys.argv[2:] if native else sys.argv[1:]
    out: dict = {"asked": [] if native else [asked()], "results": []}
    for step in steps:
        name, *args = step.split(":")
        out["results"].append(STEPS[name](*args))
        if not native:
            out["asked"].append(asked())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
